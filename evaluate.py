"""Evaluate a checkpoint and baselines side by side (the ``retrieval-evaluate`` command, run
from a clone); prints a table, writes JSON, e.g.

    python evaluate.py ckpt_path=logs/train/runs/.../checkpoints/last.ckpt dataset=toy
    python evaluate.py ckpt_path=CKPT compare=[mac,gem,rmac,pcaw,pcaw+qe]

The command itself lives in :mod:`retrieval.pipelines.evaluate`.
"""

from retrieval.pipelines.evaluate import main

if __name__ == "__main__":
    main()
