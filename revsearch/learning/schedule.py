"""Inverse square-root learning rate with linear warm-up (Vaswani et al.; fairseq's inverse_sqrt)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass
class InverseSqrtSchedule:
    """lr(step) = peak * min(step / warmup, sqrt(warmup / step)), step counted from 1. Its state is
    just the step, which the trainer stores in checkpoints."""
    peak_lr: float = 5e-4
    warmup_steps: int = 4000
    init_lr: float = 1e-7

    def __post_init__(self):
        if self.peak_lr <= 0:
            raise ConfigError(f"learning rate must be > 0, got {self.peak_lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warm-up steps must be >= 0, got {self.warmup_steps}")

    def __call__(self, step: int) -> float:
        step = max(step, 1)
        if self.warmup_steps == 0:
            return self.peak_lr
        if step <= self.warmup_steps:
            return self.init_lr + (self.peak_lr - self.init_lr) * step / self.warmup_steps
        return self.peak_lr * math.sqrt(self.warmup_steps / step)

    def apply(self, optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps, "init_lr": self.init_lr}
