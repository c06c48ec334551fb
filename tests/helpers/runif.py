"""``RunIf``: skip a test unless the machine has what it needs (after Lightning's own tests' helper).

Example:
    >>> mark = RunIf(min_cuda_gpus=1)
    >>> mark.name
    'skipif'
    >>> RunIf().kwargs["condition"]  # nothing required: runs everywhere
    False
"""

from __future__ import annotations

import sys

import pytest
import torch
from packaging.version import Version

__all__ = ["RunIf"]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def RunIf(
    *,
    min_cuda_gpus: int = 0,
    mps: bool | None = None,
    bf16_cuda: bool = False,
    min_torch: str | None = None,
    max_torch: str | None = None,
    skip_windows: bool = False,
) -> pytest.MarkDecorator:
    """A ``pytest.mark.skipif`` naming every unmet requirement.

    Args:
        min_cuda_gpus: at least this many CUDA devices.
        mps: ``True``: an Apple MPS device is required; ``False``: the test must not run where MPS is
            available; ``None``: either.
        bf16_cuda: a CUDA device that supports bfloat16.
        min_torch: torch at least this version.
        max_torch: torch below this version.
        skip_windows: skip on Windows.
    """
    conditions: list[tuple[bool, str]] = []
    if min_cuda_gpus:
        conditions.append((torch.cuda.device_count() < min_cuda_gpus, f"CUDA GPUs>={min_cuda_gpus}"))
    if mps is True:
        conditions.append((not _mps_available(), "MPS"))
    elif mps is False:
        conditions.append((_mps_available(), "no MPS"))
    if bf16_cuda:
        supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        conditions.append((not supported, "CUDA with bf16"))
    torch_version = Version(torch.__version__.split("+")[0])
    if min_torch is not None:
        conditions.append((torch_version < Version(min_torch), f"torch>={min_torch}"))
    if max_torch is not None:
        conditions.append((torch_version >= Version(max_torch), f"torch<{max_torch}"))
    if skip_windows:
        conditions.append((sys.platform == "win32", "not Windows"))
    unmet = [reason for failed, reason in conditions if failed]
    return pytest.mark.skipif(condition=bool(unmet), reason=f"Requires: [{' + '.join(unmet)}]")
