"""Train a retrieval model (the ``retrieval-train`` command, run from a clone). Every
setting is a Hydra override, e.g.

    python train.py                                   # generated toy set, CPU, minutes
    python train.py dataset=paris6k trainer=gpu       # Paris6k
    python train.py --cfg job                         # print the composed config
    python train.py -m model.optimizer.lr=1e-6,5e-6   # a grid sweep
    python train.py hparams_search=optuna             # an Optuna TPE sweep of val/mAP

The command itself lives in :mod:`retrieval.pipelines.train`.
"""

from retrieval.pipelines.train import main

if __name__ == "__main__":
    main()
