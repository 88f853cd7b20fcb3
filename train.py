"""Train a retrieval model. Every setting is a Hydra override, e.g.

    python train.py                                   # generated toy set, CPU, minutes
    python train.py dataset=paris6k trainer=gpu       # Paris6k with the default model
    python train.py experiment=oxford_seed            # the reference recipe
    python train.py --cfg job                         # print the composed config
    python train.py -m model.optimizer.lr=1e-6,5e-6   # a grid sweep
    python train.py hparams_search=optuna             # an Optuna TPE sweep of val/mAP
    python train.py -m hydra/launcher=slurm ...       # the sweep's jobs on SLURM (submitit)
"""
import hydra
from omegaconf import DictConfig

from retrieval.runs.train import train
from retrieval.tracking.resolvers import register_resolvers
from retrieval.tracking.wandb_run import finishing_wandb_run
from retrieval.utils.errors import exit_on_user_error

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    register_resolvers()  # submitit jobs unpickle main without running this module's code
    # one W&B run per job: multirun jobs share a process under the basic launcher
    with finishing_wandb_run():
        # the sweepers (Optuna) read the job's return value: cfg.optimized_metric
        return train(cfg)


if __name__ == "__main__":
    main()
