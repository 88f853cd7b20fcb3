"""Projection heads after pooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from retrieval.evaluation.whitening import Whitening
from retrieval.utils.errors import UserFacingError


class WhiteningProjection(nn.Linear):
    """A whitening as a trainable layer (cirtorch's "whiten" FC): ``y = (x - mean) @ P`` is
    a linear layer with weight ``P^T`` and bias ``-mean @ P``.

    ``init_from`` a fitted whitening (``whitening.npz`` of a database built with this
    network, or any saved :class:`Whitening`): training starts from the post-hoc whitening
    and fine-tunes it end to end. Without it the layer starts as the identity
    (``in_features`` -> ``out_features``, default square), i.e. from the plain descriptor.
    """

    def __init__(
        self,
        init_from: str | Path | None = None,
        in_features: int | None = None,
        out_features: int | None = None,
    ) -> None:
        if init_from is not None:
            whitening = _load_whitening(Path(init_from))
            super().__init__(whitening.input_dim, whitening.dim)
            with torch.no_grad():
                projection = torch.from_numpy(whitening.projection)
                self.weight.copy_(projection.T)
                self.bias.copy_(-torch.from_numpy(whitening.mean) @ projection)
            return
        if in_features is None:
            raise UserFacingError(
                "head=whitening needs model.net.projection.init_from=WHITENING_NPZ "
                "(e.g. <database>/whitening.npz) or model.net.projection.in_features="
                "the descriptor size (2048 for resnet50 with a global pooling)"
            )
        super().__init__(in_features, out_features or in_features)
        with torch.no_grad():  # identity (a truncated one when reducing): the descriptor itself
            self.weight.copy_(torch.eye(self.out_features, self.in_features))
            self.bias.zero_()


def _load_whitening(path: Path) -> Whitening:
    if not path.is_file():
        raise UserFacingError(f"whitening file {path} does not exist (model.net.projection.init_from)")
    with np.load(path, allow_pickle=False) as data:
        whitening = Whitening.from_dict(data)
    if whitening.power != 1.0:
        raise UserFacingError(
            f"{path} was fitted with power normalisation (power={whitening.power}), "
            f"which is not linear: fit one with whitening.power=1.0 for a layer"
        )
    return whitening
