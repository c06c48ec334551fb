"""Make torchvision importable beside the CPU torch (the ``zoo`` extra only; imports nothing but torch).

The registry's torchvision 0.28 wheel is the CUDA build: its compiled ops (``torchvision/_C.so``)
cannot load beside torch's CPU wheel, and ``import torchvision`` then fails while registering fake
kernels for ``torchvision::nms`` / ``qnms``. timm imports torchvision, and so does torchmetrics when
torchvision is installed — so ``import lightning`` fails too. When (and only when) the compiled ops
do not load, define the two schemas ourselves; the model classes the galleries build never call
them. Must run before anything imports torchvision (``tests/conftest.py`` calls it first thing).
"""

from __future__ import annotations

import glob
import importlib.util
import os

_LIBRARY: object | None = None  # kept alive: dropping the Library object drops the definitions


def ensure_torchvision_importable() -> bool:
    """Define ``torchvision::nms``/``qnms`` if torchvision is installed and its ops cannot load.

    Returns whether the workaround was applied. A working torchvision (matching torch build) is left alone.
    """
    global _LIBRARY
    spec = importlib.util.find_spec("torchvision")
    if _LIBRARY is not None or spec is None or not spec.submodule_search_locations:
        return _LIBRARY is not None
    import torch

    libs = glob.glob(os.path.join(next(iter(spec.submodule_search_locations)), "_C*.so"))
    try:
        if libs:
            torch.ops.load_library(libs[0])
            return False  # the compiled ops load: nothing to do
    except (OSError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    return True
