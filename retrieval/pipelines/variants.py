"""Variants of one evaluation, compared side by side: each is the run's config plus a few
Hydra overrides (another pooling, no checkpoint, whitening, αQE, ...).

``configs/evaluate.yaml`` names override lists under ``variants``; ``compare=[mac,gem+pcaw]``
picks them (``+`` joins lists). Every variant is composed by Hydra from the run's own
command-line overrides followed by its own, so group switches (``pooling=rmac``) and
interpolations behave exactly as on the command line, and later overrides win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hydra import compose
from omegaconf import DictConfig, OmegaConf

from retrieval.utils.errors import UserFacingError

FIT_ON, KINDS = ("none", "database", "train"), ("pca", "learned")


@dataclass(frozen=True)
class Variant:
    name: str
    cfg: DictConfig
    overrides: tuple[str, ...] = ()  # on top of the run's own


def pretrained(cfg: DictConfig) -> bool:
    """Whether the backbone starts from weights (ImageNet or a file) rather than at random."""
    return str(cfg.model.net.backbone.weights).lower() not in ("none", "null")


def main_name(cfg: DictConfig) -> str:
    """The run's own row: a checkpoint, or an untrained network."""
    if cfg.ckpt_path:
        return "checkpoint"
    return "untrained (ImageNet)" if pretrained(cfg) else "untrained"


def compose_variants(
    cfg: DictConfig, overrides: Sequence[str] = (), config_name: str = "evaluate"
) -> list[Variant]:
    """The run itself, then one variant per entry of ``cfg.compare``."""
    entries = [main_name(cfg), *map(str, cfg.compare)]
    if len(set(entries)) != len(entries):
        raise UserFacingError(f"compare lists a variant twice or names one like the run's own row: {entries}")
    chosen = {entry: entry.split("+") for entry in entries[1:]}
    unknown = sorted({p for parts in chosen.values() for p in parts if p not in cfg.variants})
    if unknown:  # before composing anything: a typo should not cost a run
        raise UserFacingError(
            f"compare: unknown variant(s) {unknown}; known: {sorted(cfg.variants)} "
            f"(define more under 'variants' in configs/evaluate.yaml)"
        )
    variants = [Variant(main_name(cfg), cfg)]
    check_settings(variants[0])
    dataset = plain(cfg.dataset)
    for name, parts in chosen.items():
        extra = tuple(str(o) for part in parts for o in cfg.variants[part])
        variant = Variant(name, compose(config_name=config_name, overrides=[*overrides, *extra]), extra)
        variants.append(variant)
        check_settings(variant)
        if plain(variant.cfg.dataset) != dataset:
            raise UserFacingError(
                f"variant {variant.name!r} changes the dataset settings: variants compare "
                f"networks and post-processing on one dataset; run evaluate.py once per dataset"
            )
    return variants


def check_settings(variant: Variant) -> None:
    """Refuse impossible post-processing settings before any image is embedded."""
    w, cfg = variant.cfg.whitening, variant.cfg
    if w.fit_on not in FIT_ON or w.kind not in KINDS:
        raise UserFacingError(
            f"{variant.name}: whitening.fit_on must be one of {FIT_ON} and whitening.kind "
            f"one of {KINDS}, got fit_on={w.fit_on} kind={w.kind}"
        )
    if w.kind == "learned" and w.fit_on == "database":
        raise UserFacingError(
            f"{variant.name}: whitening.kind=learned learns from the training split's "
            f"(query, positive) pairs: set whitening.fit_on=train"
        )
    if min(cfg.qe.n, cfg.dba.n) < 0 or not cfg.scales:
        raise UserFacingError(f"{variant.name}: qe.n and dba.n must be >= 0 and scales non-empty")
    check_rerank(variant.name, cfg.get("rerank"))


# re-ranking settings that must be positive (counts) or in a range, per re-ranker
_RERANK_COUNTS = ("M", "K", "k", "kq", "truncation", "iterations", "k1", "k2", "shortlist", "query_block")


def check_rerank(name: str, rerank: DictConfig | None) -> None:
    """Refuse re-ranking settings that cannot work (a zero shortlist, alpha >= 1, ...)."""
    if not rerank:
        return
    bad = [
        f"rerank.{key}={rerank[key]}" for key in _RERANK_COUNTS if key in rerank and not int(rerank[key]) >= 1
    ]
    bad += [
        f"rerank.{k}={rerank[k]}" for k in ("beta", "gamma", "tol") if k in rerank and float(rerank[k]) < 0
    ]
    if "alpha" in rerank and not 0 <= float(rerank.alpha) < 1:  # I - alpha S must stay positive definite
        bad.append(f"rerank.alpha={rerank.alpha} (must be in [0, 1): the diffusion must converge)")
    if "lambda_value" in rerank and not 0 <= float(rerank.lambda_value) <= 1:
        bad.append(f"rerank.lambda_value={rerank.lambda_value} (must be in [0, 1])")
    if "K" in rerank and "M" in rerank and int(rerank.K) >= int(rerank.M):
        bad.append(f"rerank.K={rerank.K} (must be below rerank.M={rerank.M})")
    if bad:
        raise UserFacingError(
            f"{name}: impossible re-ranking settings {', '.join(bad)}; counts must be >= 1, "
            f"weights >= 0 (configs/rerank/ lists each setting and its default)"
        )


def plain(node: DictConfig) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def describe(cfg: DictConfig, whitened_dim: int | None = None) -> str:
    """One line saying what a variant computes, for the table (``whitened_dim``: the
    whitening's actual output dimension, when known)."""
    backbone = cfg.model.net.backbone
    weights = "checkpoint" if cfg.ckpt_path else "ImageNet" if pretrained(cfg) else "random"
    parts = [f"{backbone.name} {cfg.model.net.pooling._target_.rsplit('.', 1)[-1]} ({weights})"]
    if list(cfg.scales) != [1.0]:
        parts.append("scales " + ",".join(f"{s:g}" for s in cfg.scales))
    w = cfg.whitening
    if w.fit_on != "none":
        kind = "Lw" if w.kind == "learned" else "PCAw"
        extras = "".join(
            [f" pow {w.power:g}" if w.power != 1 else "", f" shr {w.shrinkage:g}" if w.shrinkage else ""]
        )
        parts.append(f"{kind} {whitened_dim or w.dim} on {w.fit_on}{extras}")
    if cfg.dba.n:
        parts.append(f"DBA n={cfg.dba.n} α={cfg.dba.alpha:g}")
    if cfg.qe.n:
        parts.append(f"αQE n={cfg.qe.n} α={cfg.qe.alpha:g}")
    if cfg.get("rerank"):
        parts.append(describe_rerank(cfg.rerank))
    return " · ".join(parts)


def describe_rerank(rerank: DictConfig) -> str:
    kind = str(rerank._target_).rsplit(".", 1)[-1]
    if kind == "SuperGlobal":
        return f"SuperGlobal M={rerank.M} K={rerank.K} β={rerank.beta:g}"
    if kind == "Diffusion":
        return f"diffusion k={rerank.k} kq={rerank.kq} γ={rerank.gamma:g} top {rerank.truncation}"
    if kind == "KReciprocal":
        return f"k-reciprocal k1={rerank.k1} k2={rerank.k2} λ={rerank.lambda_value:g} top {rerank.shortlist}"
    return kind
