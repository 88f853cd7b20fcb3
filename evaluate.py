"""Evaluate a trained checkpoint and untrained baselines side by side; prints a table, writes JSON.

    python evaluate.py ckpt_path=logs/train/runs/.../checkpoints/last.ckpt dataset=toy
    python evaluate.py dataset=toy                       # untrained baseline
    python evaluate.py ckpt_path=CKPT compare=[mac,gem,rmac,pcaw,pcaw+qe]
    python evaluate.py dataset=roxford5k pooling=gem model.net.backbone.pretrained=true \
        scales=[1,0.7071,0.5] whitening.fit_on=database qe.n=2
"""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from retrieval.runs.evaluate import evaluate
from retrieval.utils.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate.yaml")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    # the variants of `compare` are composed from the same command-line overrides
    evaluate(cfg, list(hydra_cfg.overrides.task), hydra_cfg.job.config_name)


if __name__ == "__main__":
    main()
