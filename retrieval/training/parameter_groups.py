"""The optimizer's parameter groups: the network, and a loss's own parameters (the class
weights of a classification loss) with their own lr / weight decay where configured."""

from __future__ import annotations

from torch import nn


def parameter_groups(net: nn.Module, loss: nn.Module) -> list[dict]:
    """The network's parameters, plus a group ``"loss"`` when the loss has parameters.

    The loss group's ``lr`` / ``weight_decay`` come from the loss's attributes of those names
    when set (e.g. ``model.loss.lr=1e-3``); otherwise the optimizer's defaults apply to it
    as to the network. One group only when the loss has no parameters: checkpoints of the
    triplet recipes keep the optimizer state layout they always had.
    """
    own = list(loss.parameters())
    if not own:  # unnamed: the lr monitor keeps logging lr-Adam, as before
        return [{"params": list(net.parameters())}]
    group: dict = {"name": "loss", "params": own}
    for key in ("lr", "weight_decay"):
        if (value := getattr(loss, key, None)) is not None:
            group[key] = float(value)
    return [{"name": "net", "params": list(net.parameters())}, group]
