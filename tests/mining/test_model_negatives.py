"""mining=current_model: hardest negatives re-mined with the network being trained."""

from __future__ import annotations

import numpy as np

from retrieval.mining.model_negatives import hardest_negatives
from tests.helpers.runs import run_ok, small_run


def test_hardest_negatives_equal_a_brute_force_selection():
    rng = np.random.default_rng(0)
    queries, database = rng.normal(size=(5, 8)), rng.normal(size=(30, 8))
    candidates = np.sort(rng.choice(100, size=30, replace=False))  # database indices of the rows
    excluded = [rng.choice(candidates, size=4, replace=False) for _ in range(5)]
    pools = hardest_negatives(queries, database, candidates, excluded, top_k=6)
    for q in range(5):
        scored = sorted(
            (
                (float(queries[q] @ database[i]), int(candidates[i]))
                for i in range(30)
                if candidates[i] not in excluded[q]
            ),
            reverse=True,
        )
        assert pools[q].tolist() == [index for _, index in scored[:6]]
    # fewer allowed candidates than top_k: all of them
    assert len(hardest_negatives(queries[:1], database[:3], candidates[:3], [candidates[:1]], 10)[0]) == 2


def test_current_model_mining_trains(tiny_landmarks, tmp_path):
    result = run_ok(
        "train.py",
        *small_run(tiny_landmarks, tmp_path),
        "debug=fast",
        "logger=csv",
        "mining=current_model",
        "mining.top_k=3",
        "mining.pool_size=8",
        cwd=tmp_path,
    )
    assert "re-mined 3 hardest negatives per query among 8 images" in result.stdout + result.stderr
