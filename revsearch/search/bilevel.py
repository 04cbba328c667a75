"""The bilevel search step (docs/method.md, "Search"): alternate one α step on the architecture part of
the training data and one θ step on the weight part.

First-order DARTS by default. ``second_order=True`` uses the DARTS unrolled approximation: α's gradient
is taken at a virtual θ' = θ − ξ∇θ L_w(θ, α), with the Hessian-vector term replaced by a finite
difference (Liu et al. 2019, eq. 7–8). θ and α have separate optimizers; α is never in θ's.

``alpha_warmup_steps`` is the DARTS practice against early collapse (docs/method.md, "What makes a
search result mean something"): for the first N steps only θ trains, so α is not pushed towards
parameter-free ops while every learned op is still a random function. During warm-up the α step is
skipped entirely (no forward on the architecture batch, no α optimizer step): α stays bit-identical.

Data-parallel (``parallel``, learning/data_parallel.py): the batches are this process's shards of the
global batches, ``[(shard index, data.batching.Batch), ...]``, whose token counts were taken on the host
when they were collated (no device sync per shard, as in the Trainer); every gradient of the step (the
α and θ gradients, and in second order the virtual step, dα, dθ' and both Hessian terms) is the
token-weighted gradient of the global batch, all-reduced before it is used, so every worker takes the
one-process step.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..data.batching import Batch as CollatedBatch
from ..errors import ConfigError
from ..learning import InverseSqrtSchedule, label_smoothed_sums
from ..learning.data_parallel import DataParallel, accumulate
from ..learning.precision import (LossScale, autocast, check_precision, model_device_type,
                                  validate_precision)
from ..special_tokens import PAD_ID
from .supernet import Supernet

# (source tokens, decoder input starting with bos, target ending with eos)
Batch = Tuple[Tensor, Tensor, Tensor]
# data-parallel: this process's shards of one global batch, (shard index, batch with its host token count)
ShardedBatch = Sequence[Tuple[int, CollatedBatch]]


@dataclass
class SearchConfig:
    lr: float = 5e-4                 # θ: Adam(0.9, 0.98), inverse-sqrt schedule with warm-up
    warmup_steps: int = 10000
    betas: Tuple[float, float] = (0.9, 0.98)
    alpha_lr: float = 3e-4           # α: Adam(0.9, 0.98), fixed lr, weight decay 1e-3
    alpha_weight_decay: float = 1e-3
    alpha_betas: Optional[Tuple[float, float]] = None   # None: the same as ``betas``
    alpha_warmup_steps: int = 0      # θ-only steps before α starts moving (0: α moves from step 1)
    label_smoothing: float = 0.1
    clip_norm: float = 0.0           # 0 disables clipping of θ's gradient
    second_order: bool = False
    finite_difference_scale: float = 0.01
    derive_allow_zero: bool = False  # deriving the genotype: may a node keep ``zero``? (DARTS: never)
    precision: str = "fp32"          # fp32 | bf16 | fp16: autocast of the forward passes (learning/precision.py)

    def __post_init__(self) -> None:
        validate_precision(self.precision)
        if isinstance(self.alpha_warmup_steps, bool) or not isinstance(self.alpha_warmup_steps, int) \
                or self.alpha_warmup_steps < 0:
            raise ConfigError(f"alpha_warmup_steps must be an integer >= 0, got {self.alpha_warmup_steps!r}")
        for name in ("betas", "alpha_betas"):
            pair = getattr(self, name)
            if pair is None and name == "alpha_betas":
                continue
            if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(
                    isinstance(b, (int, float)) and not isinstance(b, bool) and 0.0 <= b < 1.0 for b in pair):
                raise ConfigError(f"{name} must be two numbers in [0, 1), got {pair!r}")
            setattr(self, name, (float(pair[0]), float(pair[1])))

    def alpha_adam_betas(self) -> Tuple[float, float]:
        return self.betas if self.alpha_betas is None else self.alpha_betas


@contextlib.contextmanager
def frozen(params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Treat ``params`` as constants for one step. The α step then skips every weight-gradient kernel
    (plain autograd prunes them, and the reversible engine only differentiates parameters that require
    grad), which is most of a backward pass."""
    previous = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, previous):
            p.requires_grad_(flag)


class BilevelSearch:
    def __init__(self, supernet: Supernet, config: SearchConfig = SearchConfig(),
                 parallel: Optional[DataParallel] = None):
        self.model, self.config, self.parallel = supernet, config, parallel
        self.weights = supernet.weight_parameters()
        self.alphas = supernet.arch_parameters()
        self.weight_optimizer = torch.optim.Adam(self.weights, lr=config.lr, betas=config.betas)
        self.alpha_optimizer = torch.optim.Adam(self.alphas, lr=config.alpha_lr,
                                                betas=config.alpha_adam_betas(),
                                                weight_decay=config.alpha_weight_decay)
        self.schedule = InverseSqrtSchedule(config.lr, config.warmup_steps)
        self.step_count = 0
        self.device_type = model_device_type(supernet)
        check_precision(config.precision, self.device_type)
        # fp16 gradients underflow without a loss scale; for fp32/bf16 this is the identity
        self.loss_scale = LossScale(enabled=config.precision == "fp16")
        if parallel is not None:
            parallel.sync.broadcast_parameters(list(supernet.parameters()))
        self.step_tokens = {"weight": 0, "arch": 0}   # global token counts of the current step's batches

    def loss(self, batch: Batch) -> Tensor:
        """The training loss per target token (the forward pass under the configured autocast, the loss
        in float32 or wider)."""
        loss, ntokens = self.summed_loss(batch)
        return loss / max(ntokens, 1)

    def summed_loss(self, batch: Batch) -> Tuple[Tensor, int]:
        """The smoothed loss summed over the batch's target tokens, and their number."""
        src, tgt_in, tgt_out = batch
        return self._loss_sum(src, tgt_in, tgt_out), int(tgt_out.ne(PAD_ID).sum())

    def _loss_sum(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        """The smoothed loss summed over the target tokens (no token count: no device sync)."""
        with autocast(self.config.precision, self.device_type):
            logits = self.model(src, tgt_in)
        return label_smoothed_sums(logits, tgt_out, self.config.label_smoothing)[0]

    def _loss_and_grads(self, batch, which: str, inputs: Sequence[Tensor],
                        allow_unused: bool = False) -> Tuple[Tensor, List[Optional[Tensor]]]:
        """The per-token loss of the (global) batch and its gradient w.r.t. ``inputs``. One process: the
        plain path. Data-parallel: each local shard's summed loss over the global token count, its
        gradient accumulated over the local shards, then all-reduced with the loss."""
        scale = self.loss_scale
        if self.parallel is None:
            loss = self.loss(batch)
            return loss, list(scale.grad(loss, inputs, allow_unused=allow_unused))
        total: List[Optional[Tensor]] = [None] * len(inputs)
        loss_sum = torch.zeros((), dtype=torch.float64)
        for k, shard in batch:
            with self.parallel.rng.active(k):
                shard_loss = self._loss_sum(shard.src, shard.tgt_in, shard.tgt_out)
            shard_loss = self.parallel.sync.mean_loss(shard_loss, self.step_tokens[which])
            total = accumulate(total, scale.grad(shard_loss, inputs, allow_unused=True))
            loss_sum = loss_sum + shard_loss.detach().double()
        grads, (loss,) = self.parallel.sync.reduce(total, inputs, extras=[loss_sum])
        if not allow_unused and any(g is None for g in grads):
            raise RuntimeError("a differentiated tensor was not used by the loss")
        return loss, grads

    def _begin_parallel_step(self, weight_batch: ShardedBatch, arch_batch: ShardedBatch) -> None:
        """Global token counts (one all-reduce of the shards' host-side counts) and this step's shard
        random streams."""
        par = self.parallel
        local = [sum(b.num_tokens for _, b in batch) for batch in (weight_batch, arch_batch)]
        self.step_tokens["weight"], self.step_tokens["arch"] = par.sync.global_tokens(*local)
        par.rng.begin(self.step_count, par.local_shards)

    def current_lr(self) -> float:
        return self.schedule(self.step_count + 1)

    def alpha_frozen(self) -> bool:
        """True while the next step is a θ-only warm-up step."""
        return self.step_count < self.config.alpha_warmup_steps

    def step(self, weight_batch: Batch, arch_batch: Batch) -> Dict[str, float]:
        """One α step then one θ step (θ only during the α warm-up). Returns losses and the θ learning
        rate used; ``arch_loss`` is NaN on a warm-up step, where no architecture loss is computed."""
        self.model.train()
        lr = self.current_lr()
        scale = self.loss_scale
        if self.parallel is not None:
            self._begin_parallel_step(weight_batch, arch_batch)
        if self.alpha_frozen():
            arch_loss = torch.tensor(float("nan"))
        else:
            if self.config.second_order:
                arch_loss, alpha_finite = self._second_order_alpha_grad(weight_batch, arch_batch, lr)
            else:
                self.alpha_optimizer.zero_grad(set_to_none=True)
                with frozen(self.weights):
                    arch_loss, grads = self._loss_and_grads(arch_batch, "arch", self.alphas)
                alpha_finite = scale.finite(grads)
                for a, g in zip(self.alphas, grads):
                    a.grad = g
            if alpha_finite:  # always, except an fp16 step whose gradients overflowed
                self.alpha_optimizer.step()

        for group in self.weight_optimizer.param_groups:
            group["lr"] = lr
        self.weight_optimizer.zero_grad(set_to_none=True)
        with frozen(self.alphas):
            weight_loss, grads = self._loss_and_grads(weight_batch, "weight", self.weights, allow_unused=True)
        for w, g in zip(self.weights, grads):
            w.grad = g
        if scale.finite(grads):
            if self.config.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.weights, self.config.clip_norm)
            self.weight_optimizer.step()
        scale.update()
        self.step_count += 1
        return {"train_loss": float(weight_loss.detach()), "arch_loss": float(arch_loss.detach()), "lr": lr}

    # --- second order (DARTS unrolled, finite differences) ---------------------------------------
    def _second_order_alpha_grad(self, weight_batch: Batch, arch_batch: Batch, xi: float) -> Tuple[Tensor, bool]:
        """Sets α's ``.grad``; returns the architecture loss and whether every gradient was finite."""
        scale = self.loss_scale
        backup = [w.detach().clone() for w in self.weights]
        # virtual step θ' = θ − ξ ∇θ L_w(θ, α)
        _, grads_w = self._loss_and_grads(weight_batch, "weight", self.weights, allow_unused=True)
        finite = scale.finite(grads_w)
        with torch.no_grad():
            for w, g in zip(self.weights, grads_w):
                if g is not None:
                    w.sub_(xi * g)
        arch_loss, grads = self._loss_and_grads(arch_batch, "arch", self.alphas + self.weights, allow_unused=True)
        finite = scale.finite(grads) and finite
        d_alpha = list(grads[:len(self.alphas)])
        d_weight = [torch.zeros_like(w) if g is None else g for w, g in zip(self.weights, grads[len(self.alphas):])]
        norm = torch.sqrt(sum((g * g).sum() for g in d_weight)).clamp_min(1e-12)
        eps = self.config.finite_difference_scale / norm
        hessian_terms: List[List[Tensor]] = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, b, g in zip(self.weights, backup, d_weight):
                    w.copy_(b + sign * eps * g)
            hessian_terms.append(self._loss_and_grads(weight_batch, "weight", self.alphas)[1])
            finite = scale.finite(hessian_terms[-1]) and finite
        with torch.no_grad():
            for w, b in zip(self.weights, backup):
                w.copy_(b)
        for a, da, hp, hm in zip(self.alphas, d_alpha, *hessian_terms):
            a.grad = da - xi * (hp - hm) / (2 * eps)
        return arch_loss.detach(), finite
