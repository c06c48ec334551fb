"""The first layer's weights as a picture: they should look like edges and blobs, not noise (tips R4.11, P14).

The first ``nn.Conv2d`` of the model (registration order) is drawn as a grid of its filters. A
model without any 2-D conv whose first ``nn.Linear`` reads an image-like input — the first batch's
input is ``(N, C, H, W)`` (or ``(N, H, W)``) and ``in_features == C*H*W`` — has that layer's rows
reshaped to ``(C, H, W)`` and drawn the same way. Any other model gets one ``view-skipped`` info
finding.

The picture never rescales silently (P14): all tiles share one symmetric range ``[-m, m]`` with
``m = max |w|`` (so zero is the middle colour and no value is clipped), stated in the caption with
the colormap. Three-channel filters are drawn as RGB (each channel mapped from ``[-m, m]`` to
``[0, 255]``, zero = mid-grey); one channel with the colormap; other channel counts one tile per
channel, a row per filter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from lightning_tips import _loggers
from lightning_tips._callback import TipCallback
from lightning_tips._render import image_grid
from lightning_tips._utils import first_tensor, is_sampled, split_batch
from lightning_tips._validate import check_int, check_str

__all__ = ["FirstLayerFilters", "filter_grid", "first_layer_weights"]

KEY = "tips/first_layer_filters"


def _initialised(p: torch.Tensor) -> bool:
    return not isinstance(p, nn.parameter.UninitializedParameter)


def first_layer_weights(
    model: nn.Module, input_shape: Sequence[int] | None = None
) -> tuple[str, torch.Tensor] | str | None:
    """The first layer's weights as filters ``(F, C, h, w)`` with their parameter name, or why not.

    Returns ``(name, weights)`` (a detached view of the live parameter), a reason string when the
    model has nothing to draw, or ``None`` when it cannot tell yet (lazy layers not materialised,
    or a linear first layer and no ``input_shape`` known).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        >>> name, w = first_layer_weights(net, (32, 1, 8, 8))
        >>> name, tuple(w.shape)
        ('1.weight', (10, 1, 8, 8))
        >>> first_layer_weights(net, (32, 64))[:14]
        'no conv layer;'
    """
    conv = next((n_m for n_m in model.named_modules() if isinstance(n_m[1], nn.Conv2d)), None)
    if conv is not None:
        name, m = conv
        return (f"{name}.weight", m.weight.detach()) if _initialised(m.weight) else None
    linear = next((n_m for n_m in model.named_modules() if isinstance(n_m[1], nn.Linear)), None)
    if linear is None:
        return "no conv layer and no linear layer: there are no first-layer filters to draw"
    name, lin = linear
    if not _initialised(lin.weight):
        return None
    if input_shape is None:
        return None
    shape = tuple(int(d) for d in input_shape)
    image_shape: tuple[int, ...] | None = None
    if len(shape) == 4 and math.prod(shape[1:]) == lin.in_features:
        image_shape = shape[1:]
    elif len(shape) == 3 and shape[1] * shape[2] == lin.in_features:
        image_shape = (1, *shape[1:])
    if image_shape is None:
        return (
            f"no conv layer; the first linear layer `{name}` takes {lin.in_features} features but the batch input "
            f"has shape {shape}, not image-like (N, C, H, W) with C*H*W = {lin.in_features}"
        )
    return f"{name}.weight", lin.weight.detach().reshape(lin.out_features, *image_shape)


def filter_grid(
    name: str, weights: torch.Tensor, max_filters: int = 64, cmap: str = "viridis"
) -> tuple[np.ndarray, str]:
    """The first ``max_filters`` filters ``(F, C, h, w)`` as one HxWx3 uint8 grid and its caption.

    Each weight is a square of ``scale = max(1, 32 // max(h, w))`` pixels; tiles are separated by
    white padding. The range is symmetric, ``[-m, m]`` with ``m = max |w|`` of the drawn filters.

    Example:
        >>> w = torch.tensor([-0.5, 0.0, 0.25, 0.5]).reshape(4, 1, 1, 1).expand(4, 1, 3, 3)
        >>> img, caption = filter_grid("conv1.weight", w)
        >>> img.shape, caption
        ((90, 90, 3), 'conv1.weight: 4 filters 3x3, 1 channel, range [-0.5, 0.5] (symmetric around 0, nothing clipped), colormap viridis (low -> high)')
    """
    w = weights.detach()[:max_filters].float().cpu()
    n, c, h, wd = w.shape
    ncols = c if c not in (1, 3) else None  # one row per filter, a tile per channel
    grid, lo, hi = image_grid(w, ncols=ncols, symmetric=True, cmap=cmap)
    scale = max(1, 32 // max(h, wd))
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    if c == 3:
        channels = "3 channels as RGB (each channel mapped linearly, zero = mid-grey)"
    elif c == 1:
        channels = "1 channel"
    else:
        channels = f"{c} channels, one tile per channel (a row per filter)"
    caption = f"{name}: {n} filters {h}x{wd}, {channels}, range [{lo:.3g}, {hi:.3g}] (symmetric around 0, nothing clipped)"
    if c != 3:
        caption += f", colormap {cmap} (low -> high)"
    if weights.shape[0] > n:
        caption += f"; the first {n} of {weights.shape[0]} filters"
    return grid, caption


class FirstLayerFilters(TipCallback):
    """Log the first layer's filters as an image grid at the start of training and every ``every_n_steps``.

    Implements tips R4.11 (first-layer weights should look like smooth edges/blobs after training,
    not noise) and P14 (the caption states the symmetric value range ``[-m, m]`` and the colormap;
    nothing is clipped). Key ``tips/first_layer_filters`` in W&B/TensorBoard, or PNG + caption text
    under ``<run dir>/tips/`` without an image-capable logger. Weights are copied to the CPU only
    on the steps drawn, on rank zero.

    Reports ``view-skipped`` (info) once when the model has no 2-D conv layer and no first linear
    layer reading an image-like input.

    Args:
        every_n_steps: draw after every n-th optimizer step, and once at the start of training (``0``: at the start only).
        max_filters: draw at most this many filters (the first ones).
        colormap: a matplotlib colormap name for single-channel filters; keep it perceptually
            uniform (``viridis``, ``cividis``, or the diverging ``berlin``/``vanimo``).

    Example:
        >>> cb = FirstLayerFilters(every_n_steps=200, max_filters=16)  # trainer = pl.Trainer(callbacks=[cb])
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU())
        >>> name, w = first_layer_weights(net)
        >>> filter_grid(name, w, cb.max_filters)[1].startswith("0.weight: 8 filters 3x3")
        True
    """

    def __init__(self, every_n_steps: int = 500, max_filters: int = 64, colormap: str = "viridis") -> None:
        super().__init__()
        check_int("every_n_steps", every_n_steps, low=0)
        check_int("max_filters", max_filters, low=1)
        import matplotlib

        if check_str("colormap", colormap) not in matplotlib.colormaps:
            raise ValueError(f"Expected `colormap` to be a matplotlib colormap name (e.g. 'viridis') but got {colormap!r}.")
        self.every_n_steps = every_n_steps
        self.max_filters = max_filters
        self.colormap = colormap
        self._input_shape: tuple[int, ...] | None = None
        self._last_step = -1
        self._done = False  # skipped for good

    def _begin_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._input_shape, self._last_step, self._done = None, -1, False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._input_shape is None and not self._done:
            split = split_batch(batch)
            x = first_tensor(split[0] if split is not None else batch)
            self._input_shape = tuple(x.shape) if x is not None else ()
        if self._last_step < 0:  # not drawn at the start yet (a linear first layer needed the batch's shape)
            self._draw(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if is_sampled(trainer.global_step, self.every_n_steps):
            self._draw(trainer, pl_module)

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if self._done or step == self._last_step:
            return
        found = first_layer_weights(pl_module, self._input_shape)
        if found is None and self._input_shape == ():
            found = "no conv layer, and the batch holds no input tensor to tell whether the first linear layer reads images"
        if found is None:
            return  # wait for the first batch (its shape) or for lazy layers to materialise
        if isinstance(found, str):
            self._done = True
            self.report(trainer, "view-skipped", "info", f"FirstLayerFilters: {found} (the filter view needs a "
                        "Conv2d, or a first Linear layer on (N, C, H, W) inputs; R4.11)", skipped=True)
            return
        self._last_step = step
        if trainer.is_global_zero:
            name, weights = found
            grid, caption = filter_grid(name, weights, self.max_filters, self.colormap)
            _loggers.log_image(trainer, KEY, grid, step=step, caption=f"step {step}: {caption}")
