"""Training loop for seq2seq models with the project's interface (``model(src, tgt_in) -> logits``).

Label-smoothed cross-entropy, Adam(0.9, 0.98) with inverse-sqrt warm-up, gradient clipping, token-count
batches, periodic validation (per-token NLL on the valid set), early stopping, resumable checkpoints
(model, optimizer, schedule, position in the epoch, RNG states), averaging of the last k checkpoints,
a compact progress line, tokens/second, time and step budgets, and ``on_report(step, metrics)`` for the
orchestration layer (Ray Tune / MLflow) to follow the curves.

Checkpoints in ``save_dir``: ``checkpoint_<step>.pt`` (the last ``keep_last`` kept),
``checkpoint_last.pt``, ``checkpoint_best.pt`` (lowest valid NLL) and, when ``average_last > 1``,
``checkpoint_avg.pt``. With ``resume`` a run continues from ``checkpoint_last.pt``; the time budget
counts the training time of all runs together. Constructing a ``Trainer`` seeds ``torch`` and ``random``
with ``config.seed`` (dropout and batch order are then reproducible, and resuming is exact).
"""
from __future__ import annotations

import copy
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..data.batching import EncodedPair, collate, filter_long, make_batches, shard_batch
from ..errors import ConfigError, RevsearchError
from .checkpoint import (average_checkpoints, load_checkpoint, load_model_state, save_checkpoint,
                         step_checkpoints)
from ..learning import InverseSqrtSchedule, label_smoothed_sums
from ..learning.data_parallel import DataParallel, accumulate
from ..learning.precision import LossScale, autocast, check_precision, validate_precision

Reporter = Callable[[int, Dict[str, float]], None]
StepHook = Callable[[int, float, float], None]   # (step, training seconds, loss per token since the last report)


@dataclass
class TrainConfig:
    lr: float = 5e-4
    warmup_steps: int = 4000
    betas: Tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0             # 0: no clipping
    max_tokens: int = 4096             # padded tokens per batch
    max_positions: int = 256           # longer training pairs (in ids) are dropped, and counted
    max_steps: Optional[int] = None
    max_epochs: Optional[int] = None
    time_budget_s: Optional[float] = None
    valid_every: int = 1000            # steps; 0: only at the end
    patience: int = 0                  # validations without improvement before stopping; 0: never
    log_every: int = 100
    quiet: bool = False
    save_dir: Optional[str] = None     # None: no checkpoint files; the best weights are kept in memory
    keep_last: int = 5
    average_last: int = 1              # >1: write checkpoint_avg.pt from the last k numbered checkpoints
    resume: bool = True
    restore_best: bool = True          # load the best-validation weights into the model at the end
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"            # fp32 | bf16 | fp16: autocast of the training forward passes

    def __post_init__(self):
        self.betas = tuple(self.betas)
        validate_precision(self.precision, "training config: precision")
        checks = [(self.max_tokens >= 1, "max_tokens must be >= 1"),
                  (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
                  (self.clip_norm >= 0, "clip_norm must be >= 0"),
                  (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
                  (self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s must be > 0"),
                  (self.valid_every >= 0 and self.log_every >= 1, "valid_every >= 0 and log_every >= 1"),
                  (self.keep_last >= 1 and self.average_last >= 1, "keep_last and average_last must be >= 1"),
                  (self.patience >= 0, "patience must be >= 0")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"training config: {msg}")
        if self.max_steps is None and self.max_epochs is None and self.time_budget_s is None:
            raise ConfigError("training config: give at least one of max_steps, max_epochs, time_budget_s")


@dataclass
class TrainResult:
    steps: int
    epochs: int
    stop_reason: str
    elapsed_s: float
    train_tokens: int
    tokens_per_s: float
    best_valid_nll: float
    last_valid_nll: float
    best_step: int
    filtered_long: int
    checkpoints: Dict[str, str] = field(default_factory=dict)
    history: List[Dict[str, float]] = field(default_factory=list)


def load_evaluated_weights(model: nn.Module, result: TrainResult) -> str:
    """Put into ``model`` (the trained one, or a fresh one of the same spec) the weights a run is scored
    and registered with, and return their checkpoint file: the average of the last k numbered checkpoints
    when ``average_last > 1`` wrote one (what averaging is for), else the best by validation NLL ("" and
    the model as it is when no files were written)."""
    path = result.checkpoints.get("avg") or result.checkpoints.get("best", "")
    if path:
        load_model_state(model, load_checkpoint(path)["model"], path)
    model.eval()
    return path


class Trainer:
    def __init__(self, model: nn.Module, train: Sequence[EncodedPair], valid: Sequence[EncodedPair],
                 config: TrainConfig, spm_model: Optional[bytes] = None, model_spec: Optional[dict] = None,
                 on_report: Optional[Reporter] = None, log: Optional[Callable[[str], None]] = None,
                 on_step: Optional[StepHook] = None, parallel: Optional[DataParallel] = None):
        """``parallel``: this process is one worker of a data-parallel run (learning/data_parallel.py);
        every global batch is sharded over the workers, gradients are all-reduced token-weighted, and
        only rank 0 writes checkpoints. None: the one-process path."""
        self.cfg = config
        self.parallel = parallel
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        check_precision(config.precision, self.device.type, "training config: precision")
        # fp16 gradients underflow without a loss scale; for fp32/bf16 this is the identity
        self.loss_scale = LossScale(enabled=config.precision == "fp16")
        keep, self.filtered_long = filter_long(train, config.max_positions)
        if not keep:
            raise RevsearchError(f"no training pairs fit max_positions={config.max_positions}")
        self.train_data = [train[i] for i in keep]
        self.valid_data = list(valid)
        self.spm_model = spm_model
        self.model_spec = model_spec if model_spec is not None else getattr(model, "spec", lambda: {})()
        self.on_report = on_report
        self.on_step = on_step
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.schedule = InverseSqrtSchedule(config.lr, config.warmup_steps)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.schedule(1), betas=config.betas,
                                          eps=config.adam_eps, weight_decay=config.weight_decay)
        self.step = self.epoch = self.batch_in_epoch = self.tokens = 0
        self.elapsed = 0.0
        self.best_valid, self.best_step, self.bad_rounds, self.last_valid = math.inf, 0, 0, math.inf
        self.history: List[Dict[str, float]] = []
        self._best_state: Optional[dict] = None
        self.save_dir = Path(config.save_dir) if config.save_dir else None
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        if parallel is not None:
            parallel.sync.broadcast_parameters(list(self.model.parameters()))
        if self.save_dir and config.resume and (self.save_dir / "checkpoint_last.pt").is_file():
            self._resume(self.save_dir / "checkpoint_last.pt")

    # ------------------------------------------------------------------ checkpoints
    def state(self, with_training_state: bool = True) -> dict:
        state = {"model": self.model.state_dict(), "model_spec": self.model_spec,
                 "step": self.step, "best_valid": self.best_valid, "best_step": self.best_step,
                 "train_config": asdict(self.cfg)}
        if self.spm_model is not None:
            state["spm_model"] = self.spm_model
        if with_training_state:
            rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            state.update(optimizer=self.optimizer.state_dict(), schedule=self.schedule.state_dict(),
                         epoch=self.epoch, batch_in_epoch=self.batch_in_epoch, rng=rng,
                         elapsed_s=self.elapsed, tokens=self.tokens, bad_rounds=self.bad_rounds,
                         last_valid=self.last_valid, history=self.history)
            if self.loss_scale.enabled:
                state["loss_scale"] = self.loss_scale.state_dict()
        return state

    def _resume(self, path: Path) -> None:
        st = load_checkpoint(path)
        if "optimizer" not in st:
            raise RevsearchError(f"{path}: checkpoint has no training state to resume from")
        load_model_state(self.model, st["model"], str(path))
        try:
            self.optimizer.load_state_dict(st["optimizer"])
        except (ValueError, KeyError) as err:
            raise RevsearchError(f"{path}: optimizer state does not match the model ({err})") from None
        self.step, self.epoch, self.batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
        self.elapsed, self.tokens = st.get("elapsed_s", 0.0), st.get("tokens", 0)
        self.best_valid, self.best_step = st.get("best_valid", math.inf), st.get("best_step", 0)
        self.bad_rounds, self.last_valid = st.get("bad_rounds", 0), st.get("last_valid", math.inf)
        self.history = list(st.get("history", []))
        if "loss_scale" in st and self.loss_scale.enabled:
            self.loss_scale.load_state_dict(st["loss_scale"])
        rng = st.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "python" in rng:
            py = rng["python"]
            random.setstate((py[0], tuple(py[1]), py[2]))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if not self.cfg.quiet:
            self._log(f"resumed from {path} at step {self.step} (epoch {self.epoch}, {self.elapsed:.0f}s trained)")

    def _save(self, is_best: bool) -> None:
        if self.parallel is not None and not self.parallel.is_writer and self.save_dir:
            return   # rank 0 writes the files; every worker holds the same weights
        if not self.save_dir:
            if is_best and self.cfg.restore_best:
                self._best_state = copy.deepcopy(self.model.state_dict())
            return
        numbered = save_checkpoint(self.save_dir / f"checkpoint_{self.step}.pt", self.state())
        for name in ["checkpoint_last.pt"] + (["checkpoint_best.pt"] if is_best else []):
            tmp = self.save_dir / f".{name}.tmp"
            shutil.copyfile(numbered, tmp)
            tmp.replace(self.save_dir / name)
        for _, old in step_checkpoints(self.save_dir)[: -self.cfg.keep_last]:
            old.unlink(missing_ok=True)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> float:
        """Per-token NLL (no smoothing) on the valid set."""
        if not self.valid_data:
            return math.nan
        self.model.eval()
        total, count = 0.0, 0
        for idx in make_batches(self.valid_data, self.cfg.max_tokens, shuffle=False):
            b = collate(self.valid_data, idx).to(self.device)
            _, nll = label_smoothed_sums(self.model(b.src, b.tgt_in), b.tgt_out, 0.0)
            total, count = total + float(nll), count + b.num_tokens   # counted on the host by collate
        self.model.train()
        return total / max(count, 1)

    def _report(self, metrics: Dict[str, float]) -> None:
        self.history.append(dict(metrics, step=self.step))
        if self.on_report is not None:
            self.on_report(self.step, dict(metrics))

    def _validate_and_save(self) -> bool:
        """Validate, checkpoint, report; True when early stopping says stop."""
        nll = self.validate()
        self.last_valid = nll
        improved = not math.isnan(nll) and nll < self.best_valid - 1e-6
        if improved:
            self.best_valid, self.best_step, self.bad_rounds = nll, self.step, 0
        else:
            self.bad_rounds += 1
        self._save(improved or math.isnan(nll))
        self._report({"valid_nll": nll, "valid_ppl": math.exp(min(nll, 50.0)) if not math.isnan(nll) else nll,
                      "best_valid_nll": self.best_valid})
        if not self.cfg.quiet:
            self._log(f"step {self.step:>6} | valid nll {nll:.3f} | ppl {math.exp(min(nll, 50)):.2f} | "
                      f"best {self.best_valid:.3f} @ {self.best_step}")
        return bool(self.cfg.patience) and self.bad_rounds >= self.cfg.patience

    # ------------------------------------------------------------------ training
    def _time_spent(self, session_start: float, elapsed_at_start: float) -> bool:
        """This process's clock says the time budget is used up (False without one)."""
        return self.cfg.time_budget_s is not None and \
            elapsed_at_start + time.perf_counter() - session_start >= self.cfg.time_budget_s

    def _budget_reason(self, session_start: float, elapsed_at_start: float) -> Optional[str]:
        if self.cfg.max_steps is not None and self.step >= self.cfg.max_steps:
            return "max_steps"
        # data-parallel: the workers' clocks differ, and all must stop at the same step or the others
        # hang in a collective; they agree on the time budget at the start of every step, in the
        # all-reduce of its token count (``_sharded_gradients``), not here
        if self.parallel is None and self._time_spent(session_start, elapsed_at_start):
            return "time_budget"
        if self.cfg.max_epochs is not None and self.epoch >= self.cfg.max_epochs:
            return "max_epochs"
        return None

    def train(self) -> TrainResult:
        cfg, model = self.cfg, self.model
        model.train()
        start, elapsed0 = time.perf_counter(), self.elapsed
        win_loss = win_nll = 0.0
        win_tok, win_time = 0, 0.0
        validated_at = -1 if not self.history else self.step
        reason = self._budget_reason(start, elapsed0)
        while reason is None:
            batches = make_batches(self.train_data, cfg.max_tokens, seed=cfg.seed, epoch=self.epoch)
            while self.batch_in_epoch < len(batches):
                t0 = time.perf_counter()
                if self.parallel is not None:
                    sharded = self._sharded_gradients(batches[self.batch_in_epoch], self.step + 1,
                                                      self._time_spent(start, elapsed0))
                    if sharded is None:   # a worker's time budget is spent: all stop here, before the step
                        reason = "time_budget"
                        break
                    loss, nll, ntok = sharded
                    self.step += 1
                    lr = self.schedule.apply(self.optimizer, self.step)
                else:
                    batch = collate(self.train_data, batches[self.batch_in_epoch]).to(self.device)
                    self.step += 1
                    lr = self.schedule.apply(self.optimizer, self.step)
                    with autocast(cfg.precision, self.device.type):
                        logits = model(batch.src, batch.tgt_in)
                    # the token count collate took on the host (no device sync)
                    loss, nll = label_smoothed_sums(logits, batch.tgt_out, cfg.label_smoothing)
                    ntok = batch.num_tokens
                    self.optimizer.zero_grad(set_to_none=True)
                    self.loss_scale.backward(loss / max(ntok, 1), list(model.parameters()))
                if self.loss_scale.finite([p.grad for p in model.parameters()]):
                    gnorm = (float(nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm))
                             if cfg.clip_norm > 0 else math.nan)
                    self.optimizer.step()
                else:  # fp16 only: an overflowed step is skipped and the loss scale backs off
                    gnorm = math.inf
                self.loss_scale.update()
                self.batch_in_epoch += 1
                self.tokens += ntok
                dt = time.perf_counter() - t0
                win_loss, win_nll, win_tok, win_time = (win_loss + loss.item(), win_nll + nll.item(),
                                                        win_tok + ntok, win_time + dt)
                self.elapsed = elapsed0 + time.perf_counter() - start
                if self.on_step is not None:   # a progress bar's tick: (step, training seconds, window loss)
                    self.on_step(self.step, self.elapsed, win_loss / max(win_tok, 1))
                if self.step % cfg.log_every == 0:
                    tok_s = win_tok / max(win_time, 1e-9)
                    metrics = {"train_loss": win_loss / max(win_tok, 1), "train_nll": win_nll / max(win_tok, 1),
                               "lr": lr, "tokens_per_s": tok_s, "grad_norm": gnorm, "epoch": self.epoch,
                               "elapsed_s": self.elapsed}
                    self._report(metrics)
                    if not cfg.quiet:
                        self._log(f"step {self.step:>6} | ep {self.epoch} | loss {metrics['train_loss']:.3f} | "
                                  f"nll {metrics['train_nll']:.3f} | lr {lr:.2e} | |g| {gnorm:.2f} | "
                                  f"{tok_s:,.0f} tok/s | {self.elapsed:.0f}s")
                    win_loss = win_nll = 0.0
                    win_tok, win_time = 0, 0.0
                if cfg.valid_every and self.step % cfg.valid_every == 0:
                    validated_at = self.step
                    if self._validate_and_save():
                        reason = "early_stopping"
                        break
                reason = self._budget_reason(start, elapsed0)
                if reason is not None:
                    break
            if self.batch_in_epoch >= len(batches):
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                reason = reason or self._budget_reason(start, elapsed0)
        self.elapsed = elapsed0 + time.perf_counter() - start
        if validated_at != self.step:
            self._validate_and_save()
        result = TrainResult(steps=self.step, epochs=self.epoch, stop_reason=reason, elapsed_s=self.elapsed,
                             train_tokens=self.tokens, tokens_per_s=self.tokens / max(self.elapsed, 1e-9),
                             best_valid_nll=self.best_valid, last_valid_nll=self.last_valid,
                             best_step=self.best_step, filtered_long=self.filtered_long, history=self.history)
        self._finish(result)
        if not cfg.quiet:
            self._log(f"done: {reason} after {self.step} steps, {self.elapsed:.0f}s, "
                      f"{result.tokens_per_s:,.0f} tok/s; best valid nll {self.best_valid:.3f} @ {self.best_step}")
        return result

    def _sharded_gradients(self, indices: List[int], step: int, time_spent: bool):
        """Data-parallel: set ``.grad`` to the gradient of the per-token loss over the global batch
        ``indices`` at step ``step``, computed on this worker's shards (summed loss / global token
        count, accumulated over local shards, all-reduced). Returns the global (loss sum, nll sum, token
        count), or None, before any forward pass, when ``time_spent`` on any worker: the flag travels in
        the all-reduce of the token counts, so the stop costs no collective of its own."""
        par, cfg = self.parallel, self.cfg
        shards = shard_batch(self.train_data, indices, par.num_shards)
        local = [(k, collate(self.train_data, shards[k]).to(self.device)) for k in par.local_shards if shards[k]]
        global_tokens, workers_out_of_time = par.sync.global_tokens(sum(b.num_tokens for _, b in local),
                                                                    int(time_spent))
        if workers_out_of_time:
            return None
        par.rng.begin(step, par.local_shards)
        params = list(self.model.parameters())
        wrt = [p for p in params if p.requires_grad]
        total = [None] * len(wrt)
        loss_sum = torch.zeros((), dtype=torch.float64)
        nll_sum = torch.zeros((), dtype=torch.float64)
        for k, batch in local:
            with par.rng.active(k):
                with autocast(cfg.precision, self.device.type):
                    logits = self.model(batch.src, batch.tgt_in)
            loss, nll = label_smoothed_sums(logits, batch.tgt_out, cfg.label_smoothing)
            total = accumulate(total, self.loss_scale.grad(par.sync.mean_loss(loss, global_tokens), wrt,
                                                           allow_unused=True))
            loss_sum, nll_sum = loss_sum + loss.detach().double(), nll_sum + nll.detach().double()
        grads, (loss_sum, nll_sum) = par.sync.reduce(total, wrt, extras=[loss_sum, nll_sum])
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(wrt, grads):
            p.grad = g
        return loss_sum, nll_sum, global_tokens

    def _finish(self, result: TrainResult) -> None:
        writer = self.parallel is None or self.parallel.is_writer
        if self.parallel is not None:
            self.parallel.sync.barrier()   # rank 0's last checkpoint files are complete before anyone reads
        if self.save_dir:
            for name in ("last", "best"):
                p = self.save_dir / f"checkpoint_{name}.pt"
                if p.is_file():
                    result.checkpoints[name] = str(p)
            numbered = [p for _, p in step_checkpoints(self.save_dir)][-self.cfg.average_last:]
            if self.cfg.average_last > 1 and len(numbered) > 1:
                if writer:
                    state = self.state(with_training_state=False)
                    state["model"] = average_checkpoints(numbered)
                    state["averaged_from"] = [p.name for p in numbered]
                    save_checkpoint(self.save_dir / "checkpoint_avg.pt", state)
                if self.parallel is not None:
                    self.parallel.sync.barrier()   # the average is written before another worker loads it
                result.checkpoints["avg"] = str(self.save_dir / "checkpoint_avg.pt")
            if self.cfg.restore_best and "best" in result.checkpoints:
                load_model_state(self.model, load_checkpoint(result.checkpoints["best"])["model"],
                                 result.checkpoints["best"])
        elif self.cfg.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        self.model.eval()
