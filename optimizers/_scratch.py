"""The state dtype rule and the scratch buffers of the eager ``"fast"`` paths.

* State (and the step's math) is fp32 for fp16/bf16 parameters, the parameter's own dtype
  otherwise.
* :class:`ScratchBuffers`: flat buffers kept across steps and reused across tensors, so the eager
  ``"fast"`` path allocates nothing per step (on CPU, glibc serves multi-MB temporaries with
  ``mmap`` and returns them on ``free``, so a per-step temporary pays page faults every step).
"""

from __future__ import annotations

import math

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def state_dtype(param: torch.Tensor) -> torch.dtype:
    """Dtype of optimizer state (and of the step's math) for ``param``."""
    return torch.float32 if param.dtype in _LOW_PRECISION else param.dtype


class ScratchBuffers:
    """Flat buffers kept across steps; ``get`` hands out a view shaped like the current tensor.

    One buffer per (slot, device, dtype), grown to the largest tensor seen; views are cached per
    shape, so a steady-state step allocates nothing. Buffers are plain attributes of the
    optimizer, never part of its ``state_dict``: every step overwrites them before reading.
    """

    def __init__(self) -> None:
        self._flat: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self._views: dict[tuple[str, torch.device, torch.dtype, torch.Size], torch.Tensor] = {}

    def reserve(self, slot: str, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        key = (slot, device, dtype)
        flat = self._flat.get(key)
        if flat is None or flat.numel() < numel:
            self._flat[key] = torch.empty(numel, dtype=dtype, device=device)
            self._views = {k: v for k, v in self._views.items() if k[:3] != key}

    def get(
        self, slot: str, shape: torch.Size, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        key = (slot, device, dtype, shape)
        view = self._views.get(key)
        if view is None:
            numel = math.prod(shape)
            self.reserve(slot, numel, dtype, device)
            view = self._flat[(slot, device, dtype)][:numel].view(shape)
            self._views[key] = view
        return view

    def working(self, slot: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``tensor`` itself when it is contiguous and of ``dtype``; else a copy of it in this
        slot (the caller writes a modified copy back)."""
        if tensor.dtype == dtype and tensor.is_contiguous():
            return tensor
        copy = self.get(slot, tensor.shape, dtype, tensor.device)
        copy.copy_(tensor)
        return copy

    def clear(self) -> None:
        self._flat.clear()
        self._views.clear()
