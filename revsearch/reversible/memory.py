"""Counting the bytes autograd keeps alive for backward, on any device (CPU included).

``torch.autograd.graph.saved_tensors_hooks`` sees every tensor an op (or a custom Function) saves for
backward, including those saved while backward itself recomputes a layer. We count unique storages, so a
tensor saved by three ops counts once, and we release the count when autograd drops its reference.
Parameters are weights, not activations, and are excluded.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import Tensor


class _Saved:
    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: Tensor, key: int, meter: "SavedTensorMeter"):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self):
        self.meter._release(self.key)


class SavedTensorMeter:
    """Context manager: ``live_bytes`` now, ``peak_bytes`` since entry, ``total_packed_bytes`` ever."""

    def __init__(self, exclude: Iterable[Tensor] = ()):
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._refs: Dict[int, int] = {}
        self._sizes: Dict[int, int] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self.total_packed_bytes = 0
        self._hooks: Optional[torch.autograd.graph.saved_tensors_hooks] = None

    def _pack(self, tensor: Tensor):
        if tensor.device.type == "meta":
            return tensor
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._excluded or key == 0:
            return tensor
        if key not in self._refs:
            self._refs[key] = 0
            self._sizes[key] = storage.nbytes()
            self.live_bytes += storage.nbytes()
            self.total_packed_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._refs[key] += 1
        return _Saved(tensor, key, self)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Saved) else packed

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live_bytes -= self._sizes.pop(key)

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
        self._hooks = None
