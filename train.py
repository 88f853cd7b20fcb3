"""Train a retrieval model. Every setting is a Hydra override, e.g.

    python train.py                                   # generated toy set, CPU, minutes
    python train.py dataset=paris6k trainer=gpu       # Paris6k with the default model
    python train.py experiment=oxford_seed            # the reference recipe
    python train.py --cfg job                         # print the composed config
    python train.py -m model.optimizer.lr=1e-6,5e-6   # a grid sweep
"""
import hydra
from omegaconf import DictConfig

from retrieval.runs.train import train
from retrieval.utils.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
