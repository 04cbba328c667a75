"""Replayable autocast state for recomputation (the companion of ``rng.py``).

Backward with reconstruction calls every coupling function a second time. Under mixed precision
(``torch.autocast``) that second call must run in the same autocast state as the first: same device
types enabled, same low-precision dtype. Otherwise the recomputed ``G_k`` differs from the one that
was added in the forward pass by a whole low-precision rounding step, the rebuilt input is off by that
much, and the error compounds down the stack. Autocast state is thread-local and the caller may well
run ``backward()`` outside its ``autocast`` block (the usual pattern), so it is captured at forward time
and re-entered around each recomputation, exactly like the RNG state.

Only the coupling functions run under the replayed state; the additive coupling itself and the split
states stay in the states' own dtype (under autocast ``stack.py`` keeps them in float64, see
``ReversibleStack.residual_splits``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Tuple

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class AutocastState:
    """``(device_type, enabled, dtype)`` for every device type a call's tensors live on, plus CPU,
    and whether autocast's weight-cast cache was on."""

    devices: Tuple[Tuple[str, bool, torch.dtype], ...]
    cache_enabled: bool

    @staticmethod
    def capture(tensors: Iterable[Optional[torch.Tensor]]) -> "AutocastState":
        types = {"cpu"} | {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
        types = {d for d in types if torch.amp.is_autocast_available(d)}  # e.g. "meta" has none
        devices = tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in sorted(types))
        return AutocastState(devices=devices, cache_enabled=torch.is_autocast_cache_enabled())

    @property
    def enabled(self) -> bool:
        return any(on for _, on, _ in self.devices)

    def matches_current(self) -> bool:
        # the cache flag only matters while some device type is enabled
        return all(torch.is_autocast_enabled(d) == on and (not on or torch.get_autocast_dtype(d) == dtype)
                   for d, on, dtype in self.devices) and \
            (not self.enabled or torch.is_autocast_cache_enabled() == self.cache_enabled)


def autocast_enabled_for(tensors: Iterable[Optional[torch.Tensor]]) -> bool:
    """True when autocast is on for the device type of any of ``tensors``."""
    return any(torch.amp.is_autocast_available(t.device.type) and torch.is_autocast_enabled(t.device.type)
               for t in tensors if isinstance(t, torch.Tensor))


@contextlib.contextmanager
def replayed_autocast(state: Optional[AutocastState]) -> Iterator[None]:
    """Run the body in the autocast state ``state`` (nothing to do when it is already the current one,
    which is always the case in float32 training: no context is entered at all)."""
    if state is None or state.matches_current():
        yield
        return
    with contextlib.ExitStack() as stack:
        for device_type, enabled, dtype in state.devices:
            stack.enter_context(torch.autocast(device_type=device_type, dtype=dtype, enabled=enabled,
                                               cache_enabled=state.cache_enabled))
        yield
