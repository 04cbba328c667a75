"""Mixed precision for the search and the retraining: ``precision: fp32 | bf16 | fp16``.

``fp32`` is the plain float32 path: no autocast context is entered and no loss scale is applied, so the
code path (and every number) is exactly what it is without this module. ``bf16`` / ``fp16`` run the
model's forward pass under ``torch.autocast`` on the device type its parameters live on (the loss is
computed outside it, in float32); the reversible stacks keep their split states and the additive
coupling in float32 and replay the autocast state when they recompute (``reversible/autocast.py``).
``fp16`` also scales the loss (``LossScale``), because float16 gradients underflow; bfloat16 has
float32's exponent range and needs none.

Which precisions a device supports is asked of torch itself (``check_precision``): on this project's
CPUs that is ``fp32`` and ``bf16`` (``fp16`` autocast exists on CPU in recent torch builds, but where
the CPU has no float16 arithmetic it is emulated and slower than float32).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import ContextManager, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def validate_precision(precision: object, field: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"{field} must be one of: {', '.join(PRECISIONS)}; got {precision!r}")
    return str(precision)


def autocast_supported(precision: str, device_type: str) -> bool:
    """Does torch run ``precision`` autocast on ``device_type`` here? Asked by entering it: torch
    disables an autocast it cannot do (with a warning) instead of failing."""
    if precision == "fp32":
        return True
    if not torch.amp.is_autocast_available(device_type):
        return False
    if device_type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        return False
    dtype = AUTOCAST_DTYPES[precision]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device_type=device_type, dtype=dtype):
                return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == dtype
        except (RuntimeError, ValueError):
            return False


def model_device_type(model: nn.Module) -> str:
    """The device type of the model's parameters (``cpu`` for a model without any)."""
    for p in model.parameters():
        return p.device.type
    return "cpu"


def check_precision(precision: str, device_type: str, field: str = "precision") -> str:
    """``precision`` if it is valid and supported on ``device_type``; else one ``ConfigError`` line."""
    validate_precision(precision, field)
    if not autocast_supported(precision, device_type):
        others = [p for p in PRECISIONS if autocast_supported(p, device_type)]
        raise ConfigError(f"{field}: {precision} is not supported on device {device_type!r} here; "
                          f"use one of: {', '.join(others)}")
    return precision


def autocast(precision: str, device_type: str) -> ContextManager:
    """The forward pass's context: ``torch.autocast`` for bf16/fp16, nothing at all for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=AUTOCAST_DTYPES[precision])


class LossScale:
    """Dynamic loss scaling for fp16 (the rule of ``torch.amp.GradScaler``), for code that takes its
    gradients with ``torch.autograd.grad`` as well as with ``backward()``.

    The loss is multiplied by ``scale`` before differentiation and the gradients divided by it after;
    a step whose gradients are not finite is skipped by the caller and halves the scale; after
    ``growth_interval`` finite steps in a row the scale doubles. Disabled (fp32, bf16) it is the
    identity: ``grad`` is exactly ``torch.autograd.grad`` and every step counts as finite.
    """

    def __init__(self, enabled: bool, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        self.enabled = enabled
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.good_steps = 0
        self.found_inf = False   # some gradient since the last ``update`` was not finite
        self.skipped_steps = 0

    def grad(self, loss: Tensor, inputs: Sequence[Tensor], allow_unused: bool = False) -> Tuple[Optional[Tensor], ...]:
        """``torch.autograd.grad(loss, inputs)``, computed on the scaled loss and unscaled."""
        if not self.enabled:
            return torch.autograd.grad(loss, inputs, allow_unused=allow_unused)
        grads = torch.autograd.grad(loss * self.scale, inputs, allow_unused=allow_unused)
        return tuple(None if g is None else g / self.scale for g in grads)

    def backward(self, loss: Tensor, params: Sequence[Tensor]) -> None:
        """``loss.backward()`` on the scaled loss, then the ``.grad`` of ``params`` unscaled in place."""
        if not self.enabled:
            loss.backward()
            return
        (loss * self.scale).backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.div_(self.scale)

    def finite(self, grads: Sequence[Optional[Tensor]]) -> bool:
        """Are all ``grads`` finite? Remembers a failure for ``update``; always True when disabled."""
        if not self.enabled:
            return True
        ok = all(bool(torch.isfinite(g).all()) for g in grads if g is not None)
        if not ok:
            self.found_inf = True
        return ok

    def update(self) -> None:
        """Call once per step, after every optimizer of the step had its chance."""
        if not self.enabled:
            return
        if self.found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
            self.skipped_steps += 1
        else:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= self.growth_factor
                self.good_steps = 0
        self.found_inf = False

    def state_dict(self) -> Dict[str, float]:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.scale = float(state["scale"])
        self.good_steps, self.skipped_steps = int(state["good_steps"]), int(state.get("skipped_steps", 0))
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ConfigError(f"loss scale in the checkpoint must be a positive number, got {self.scale!r}")
