"""Sweeps as a user runs them: Hydra grid multirun, Optuna TPE with resumable storage, and
the submitit launcher (local executor: real subprocesses, the SLURM launcher's code path)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from retrieval.tracking.offline_run import offline_runs
from tests.helpers.runs import REPO_ROOT, run_ok, run_script, tiny_run

pytestmark = pytest.mark.slow

# sweeps need metrics, not the t-SNE maps or the untrained baseline of every job
QUICK = ["evaluate_before=false", "callbacks.retrieval_visualisation.embedding_method=pca"]


def _sweep_dir(logs: Path) -> Path:
    [sweep] = (logs / "train" / "multiruns").iterdir()
    return sweep


def _job_overrides(job_dir: Path) -> list[str]:
    return yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())


def test_grid_multirun_through_the_submitit_launcher_gives_every_job_its_own_wandb_run(
    tiny_landmarks, tmp_path
):
    """A 2x2 grid on hydra/launcher=local: the submitit launcher (the SLURM one's code) with
    local jobs; each job is its own process, W&B run and metrics (the basic launcher's grid
    runs in the README test)."""
    run_ok(
        "train.py",
        "-m",
        "hydra/launcher=local",
        *tiny_run(tiny_landmarks, tmp_path / "logs", *QUICK),
        "model.optimizer.lr=1e-6,5e-6",
        "model.loss.margin=1,2",
        cwd=tmp_path,
    )
    sweep = _sweep_dir(tmp_path / "logs")
    # one submitit job folder each: pickled task, logs and the returned metric
    results = sorted(sweep.glob(".submitit/*/*_result.pkl"))
    assert len({p.parent.name for p in results}) == 4  # four submitit jobs (local: processes)
    runs = offline_runs(sweep)
    assert len(runs) == 4 and len({r.path.name for r in runs}) == 4
    assert {r.config["hydra"]["choices"]["hydra/launcher"] for r in runs} == {"local"}
    seen = set()
    for run in runs:
        job_dir = run.path.parents[1]  # <sweep>/<job>/wandb/offline-run-*
        overrides = _job_overrides(job_dir)
        lr, margin = run.config["model"]["optimizer"]["lr"], run.config["model"]["loss"]["margin"]
        assert f"model.optimizer.lr={lr:g}" in overrides and f"model.loss.margin={margin:g}" in overrides
        seen.add((lr, margin))
        # its own metrics only: epoch 0 and the best checkpoint, nothing from other jobs
        assert [("val/mAP" in row) for row in run.history].count(True) == 2
        trained = json.loads((job_dir / "metrics.json").read_text())["results"]["trained"]["mAP"]
        assert run.summary["val/mAP"] == trained and 0.0 <= trained <= 1.0
        assert run.exit_code == 0 and run.group == f"train-{sweep.name}" and "multirun" in run.tags
        assert run.name.startswith(f"train-oxford5k#{job_dir.name}[")
    assert seen == {(1e-6, 1.0), (1e-6, 2.0), (5e-6, 1.0), (5e-6, 2.0)}


def test_optuna_sweep_reports_best_parameters_and_resumes(tiny_landmarks, tmp_path):
    import optuna

    args = [*tiny_run(tiny_landmarks, tmp_path / "logs", *QUICK), "hparams_search=optuna", "logger=csv"]
    result = run_ok("train.py", *args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    best = yaml.safe_load((_sweep_dir(tmp_path / "logs") / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "model.loss.margin",
    }
    assert 0.0 <= best["best_value"] <= 1.0
    assert 1e-6 <= best["best_params"]["model.optimizer.lr"] <= 1e-3
    assert "Best parameters" in result.stdout + result.stderr

    storage = f"sqlite:///{tmp_path / 'logs' / 'optuna' / 'train_oxford5k.db'}"
    study = optuna.load_study(study_name="train_oxford5k", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    assert all(0.0 <= t.value <= 1.0 for t in study.trials)
    # the same command again continues the study from its storage
    result = run_ok("train.py", *args, "hydra.sweeper.n_trials=1", cwd=tmp_path)
    assert len(optuna.load_study(study_name="train_oxford5k", storage=storage).trials) == 3


def _readme_try_commands() -> list[list[str]]:
    """The README's two "try both kinds first" sweep lines, split as a shell would."""
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    [at] = [i for i, line in enumerate(lines) if line.startswith("# try both kinds first")]
    commands = [shlex.split(line) for line in lines[at + 1 : at + 3]]
    assert all(c[:2] == ["python", "train.py"] for c in commands), commands
    return [c[2:] for c in commands]


def test_the_readme_sweep_commands_run_as_printed(tmp_path):
    # exactly the README's lines, launched from a fresh folder with no paths.* overrides
    # (the sweep folder lies under paths.log_dir, resolved before any job exists); the toy
    # set is generated under tmp_path/data
    grid, optuna = _readme_try_commands()
    assert "-m" in grid and "hparams_search=optuna" in optuna
    result = run_ok("train.py", *grid, cwd=tmp_path, timeout=900)
    [sweep] = (tmp_path / "logs" / "debug" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"], result.stderr[-2000:]
    result = run_ok("train.py", *optuna, cwd=tmp_path, timeout=900)
    [trials] = [d for d in (tmp_path / "logs" / "debug" / "multiruns").iterdir() if d != sweep]
    best = yaml.safe_load((trials / "optimization_results.yaml").read_text())
    assert 0.0 < best["best_value"] <= 1.0, result.stderr[-2000:]
    assert sorted(p.name for p in trials.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1"]
    # debug=fast has no evaluation to maximise: one paragraph, before any trial trains
    bad = run_script("train.py", "hparams_search=optuna", "debug=fast", cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "an Optuna sweep maximises val/mAP" in bad.stderr and "debug=limit" in bad.stderr
    assert "Traceback" not in bad.stderr
