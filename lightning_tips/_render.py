"""Pictures for people: grids of images, colormaps, matplotlib figures as arrays (tip P14).

Every picture says its value range; nothing is clipped silently: values are mapped linearly from
``[vmin, vmax]`` (which the caller reports in the caption) to the colormap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["colorize", "figure_to_array", "image_grid", "new_figure", "normalize"]


def normalize(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> tuple[np.ndarray, float, float]:
    """Map ``values`` linearly to [0, 1] from ``[vmin, vmax]`` (default: their min/max); returns the range used."""
    lo = float(np.min(values)) if vmin is None else vmin
    hi = float(np.max(values)) if vmax is None else vmax
    span = hi - lo if hi > lo else 1.0
    return (values - lo) / span, lo, hi


def colorize(values2d: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """A [0, 1] HxW array as an HxWx3 uint8 image in a perceptually uniform colormap."""
    import matplotlib

    rgba = matplotlib.colormaps[cmap](np.clip(values2d, 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def image_grid(
    images: torch.Tensor | np.ndarray,
    ncols: int | None = None,
    pad: int = 1,
    symmetric: bool = False,
    cmap: str = "viridis",
) -> tuple[np.ndarray, float, float]:
    """Tile N images (NCHW, C in {1, 3}) into one HxWx3 uint8 grid with one shared value range.

    Single-channel images are drawn with ``cmap``; 3-channel ones as RGB. With ``symmetric`` the
    range is ``[-m, m]`` (weights), else ``[min, max]``. Returns ``(grid, vmin, vmax)``.
    """
    arr = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, float)
    if arr.ndim == 3:
        arr = arr[:, None]
    n, c, h, w = arr.shape
    if c not in (1, 3):  # show each channel separately
        arr = arr.reshape(n * c, 1, h, w)
        n, c = n * c, 1
    if symmetric:
        m = float(np.max(np.abs(arr))) or 1.0
        scaled, lo, hi = normalize(arr, -m, m)
    else:
        scaled, lo, hi = normalize(arr)
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        tile = colorize(scaled[i, 0], cmap) if c == 1 else (np.transpose(scaled[i], (1, 2, 0)) * 255 + 0.5).astype(np.uint8)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = tile
    return grid, lo, hi


def new_figure(width: float = 6.0, height: float = 4.0) -> Figure:
    """A matplotlib figure on the Agg canvas (no display, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an HxWx3 uint8 array."""
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # type: ignore[attr-defined]
