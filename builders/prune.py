"""Structured pruning: whole conv filters and fc units are removed, so the exported graph is really smaller.

Torch-Pruning's dependency graph finds every layer coupled to a removed channel (the next conv's input channels,
fc1's input features per removed filter), so this works for any CNN a user brings, not just the seed model.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from builders.models import INPUT_SHAPE
from tritune.errors import BuildError


def structured_prune(
    model: nn.Module,
    ratio: float,
    output_layer: nn.Module | None = None,
    example: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
) -> nn.Module:
    """Remove ``ratio`` of the filters/units of every prunable layer by L1 magnitude, in place.

    The output layer keeps its units (the class count must not change): ``output_layer``, else the last Linear
    layer, else the last convolution. ``example`` is the model's input(s) for tracing (default: one seed image).
    """
    if not 0.0 < ratio < 1.0:
        raise BuildError(f"prune ratio must be in (0, 1), got {ratio}; 0.5 removes half the filters")
    if output_layer is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        convs = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
        output_layer = linears[-1] if linears else convs[-1] if convs else None
    if example is None:
        example = torch.zeros(1, *INPUT_SHAPE)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[output_layer] if output_layer is not None else [],
    )
    pruner.step()
    return model.eval()
