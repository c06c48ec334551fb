"""``MissingBiasCheck``: a layer without bias that no normalisation follows (tip P4) → ``missing-bias``.

A linear/conv layer built with ``bias=False`` is fine when a normalisation layer follows it (the
norm's shift is the bias); otherwise the rule of thumb is a bias in every layer (P4). The module tree
is read in registration order: the module registered right after the layer is "what follows it".
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch import nn

from lightning_tips.checks._preflight import CardLine, PreflightCheck, Verdict, settle

__all__ = ["MissingBiasCheck", "layers_without_bias"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.modules.normalization.RMSNorm)


def layers_without_bias(module: nn.Module) -> list[str]:
    """Paths of the linear/conv layers with ``bias=None`` whose next registered leaf is not a norm layer.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Linear(4, 2, bias=False))
        >>> layers_without_bias(net)
        ['2']
    """
    leaves = [(n, m) for n, m in module.named_modules() if not list(m.children())]
    found = []
    for i, (name, m) in enumerate(leaves):
        if isinstance(m, _LAYERS) and m.bias is None:
            following = leaves[i + 1][1] if i + 1 < len(leaves) else None
            if not isinstance(following, _NORMS):
                found.append(name)
    return found


class MissingBiasCheck(PreflightCheck):
    """Pre-flight check P4: an ``info`` finding ``missing-bias`` naming the layers without a bias
    that no normalisation layer follows. Reads the module tree only (no forward pass).

    Example:
        >>> MissingBiasCheck().title
        'missing bias'
    """

    title = "missing bias"
    code = "missing-bias"

    def run_check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> CardLine:
        def measure() -> tuple[list[Verdict], str]:
            names = layers_without_bias(pl_module)
            if not names:
                return [], "every linear/conv layer has a bias or a norm after it"
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            message = f"{len(names)} layer(s) have no bias and no normalisation after them: {shown}"
            return [Verdict(self.code, "info", message, {"layers": float(len(names))}, module=names[0])], message

        return settle(self, trainer, measure)
