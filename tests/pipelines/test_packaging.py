"""A non-editable install runs its own commands: the configs ship inside the wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.helpers.configs import SMALL_VGG_MODEL
from tests.helpers.runs import small_run
from tests.helpers.server import free_port, health_of_served

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_runs_its_commands_outside_the_clone(small_vgg_root, tmp_path):
    wheels = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO_ROOT),
        ],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("retrieval-*.whl")
    # the dependencies (torch, Lightning, ...) come from this interpreter's site-packages;
    # retrieval itself only from the wheel
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        cwd=tmp_path,
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _run(
        [str(python), "-c", "import retrieval, pathlib; print(pathlib.Path(retrieval.__file__).resolve())"],
        cwd=outside,
    ).stdout.strip()
    assert where.startswith(str(env_dir)), f"retrieval imported from {where}, not the wheel"
    shipped = Path(where).parent / "configs"
    assert (shipped / "train.yaml").is_file() and not shipped.is_symlink()

    job = _run([str(env_dir / "bin" / "retrieval-train"), "--cfg", "job"], cwd=outside).stdout
    assert "task_name: train" in job and "_target_: retrieval.training." in job
    listing = _run([str(env_dir / "bin" / "retrieval-download")], cwd=outside).stdout
    assert "roxford5k" in listing

    # the commands a user runs after `pip install`, on a small VGG-layout set
    bin_dir = env_dir / "bin"
    trained = _run(
        [
            str(bin_dir / "retrieval-train"),
            *small_run(small_vgg_root.parent, outside),
            "debug=fast",
            "logger=csv",
        ],
        cwd=outside,
    )
    assert "fast_dev_run" in trained.stdout + trained.stderr  # Lightning's one-batch smoke run
    db = outside / "db"
    imagenet_lite0 = [
        *SMALL_VGG_MODEL,
        "model.net.backbone.name=tf_efficientnet_lite0",
        "model.net.backbone.weights=imagenet",
    ]
    _run(
        [
            str(bin_dir / "retrieval-database"),
            "build",
            *imagenet_lite0,
            f"paths.data_dir={small_vgg_root.parent}",
            f"db_dir={db}",
        ],
        cwd=outside,
    )
    assert (db / "meta.json").is_file()
    image = small_vgg_root / "jpg" / "arch_000001.jpg"
    hits = json.loads(
        _run(
            [str(bin_dir / "retrieval-query"), f"image={image}", f"db={db}", "k=3", "--json"], cwd=outside
        ).stdout
    )
    assert hits[0]["name"] == "arch_000001" and len(hits) == 3
    port = free_port()
    health, returncode, output = health_of_served(
        [str(bin_dir / "retrieval-app"), f"db={db}", f"port={port}", "log_level=warning"], port, outside
    )
    assert health is not None and health["images"] == 11 and returncode == 0, output
