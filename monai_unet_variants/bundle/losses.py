"""Losses of the bundles: MONAI's deep-supervision wrapper for the family's stacked deep-supervision output."""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss

__all__ = ["StackedDeepSupervisionLoss"]


class StackedDeepSupervisionLoss(DeepSupervisionLoss):
    """MONAI's ``DeepSupervisionLoss`` for the stacked output of the family's networks, as a weighted mean.

    A network with ``deep_supervision=True`` returns ``(B, 1 + n, C, *spatial)`` in training mode, the main output
    first (MONAI's stacked form); MONAI's wrapper takes a list, so the stack is unbound along dimension 1 first. A
    plain ``(B, C, *spatial)`` output (eval mode, or a network without deep supervision) goes to ``loss`` as it is,
    so one config serves every network. The weighted sum is divided by the sum of the weights: the logged loss of a
    deeply supervised network is on the scale of a plain one's. ``weight_mode="same"`` weighs every output alike,
    as UNet++ and UNet 3+ train theirs; MONAI's ``"exp"`` and ``"two"`` and explicit ``weights`` work as in MONAI.

    Args:
        loss: the loss of each output, e.g. ``DiceCELoss(to_onehot_y=True, softmax=True)``.
        weight_mode: ``"same"``, ``"exp"`` or ``"two"`` (see MONAI's ``DeepSupervisionLoss``). Defaults to ``"same"``.
        weights: explicit weights of the outputs, main first; overrides ``weight_mode``. Defaults to ``None``.

    Example::

        >>> from monai.losses import DiceCELoss
        >>> loss = StackedDeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
        >>> label = torch.randint(0, 3, (2, 1, 16, 16))
        >>> stacked = torch.randn(2, 4, 3, 16, 16)          # main output and three deep-supervision heads
        >>> bool(loss(stacked, label) > 0), loss(stacked[:, 0], label).shape
        (True, torch.Size([]))
    """

    def __init__(self, loss: torch.nn.modules.loss._Loss, weight_mode: str = "same",
                 weights: list[float] | None = None) -> None:
        if weight_mode not in ("same", "exp", "two"):
            raise ValueError(f"weight_mode must be 'same', 'exp' or 'two' (got {weight_mode!r}).")
        super().__init__(loss, weight_mode=weight_mode, weights=weights)

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        if isinstance(input, torch.Tensor):
            if input.dim() == target.dim():
                return super().forward(input, target)
            if input.dim() != target.dim() + 1:
                raise ValueError(
                    f"the network's output {tuple(input.shape)} is neither a plain (B, C, *spatial) output nor a "
                    f"deep-supervision stack (B, 1 + n, C, *spatial) for the label {tuple(target.shape)}"
                )
            input = list(torch.unbind(input, dim=1))
        weights = self.get_weights(levels=len(input))
        if len(weights) < len(input):
            raise ValueError(f"{len(input)} outputs but only {len(weights)} weights: {weights}")
        return super().forward(input, target) / sum(weights[: len(input)])
