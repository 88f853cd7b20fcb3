"""Evaluate a trained checkpoint or an untrained baseline; prints a table, writes JSON.

    python evaluate.py ckpt_path=logs/train/runs/.../checkpoints/last.ckpt dataset=toy
    python evaluate.py dataset=toy                       # untrained baseline
    python evaluate.py dataset=roxford5k pooling=gem model.net.backbone.pretrained=true
"""
import hydra
from omegaconf import DictConfig

from retrieval.runs.evaluate import evaluate
from retrieval.utils.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate.yaml")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
