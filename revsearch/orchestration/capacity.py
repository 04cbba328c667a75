"""Does a sweep fit where it is about to run? Checked before stage 1, in one line each.

A sweep can validate and still be impossible: a trial that asks for 64 CPUs on a 2-core machine or a GPU
where there is none (Ray then waits forever), a supernet of ``hidden: 10^12`` (allocation tracebacks in
every trial), ``data.synthetic.train: 10^9`` (days of generation, then out of memory). The resources are
compared with this machine (a local run, before Ray starts) or with the largest node of the joined
cluster; the sizes are estimated from the settings alone, without building or allocating anything:
the supernet's parameters are counted on PyTorch's ``meta`` device (shapes, no memory), op by op.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

from ..errors import ConfigError

#: bytes per parameter while a supernet trains: fp32 weights, gradients and Adam's two moments
TRAIN_BYTES_PER_PARAM = 16
#: bytes per synthetic sentence pair while it is generated, written, loaded and encoded (measured:
#: ~440 B peak per pair while generating, ~130 B of text, the token ids of both sides once encoded)
BYTES_PER_SYNTHETIC_PAIR = 1024
#: trials estimated for a space: every combination of its discrete values and range ends up to this
#: many, else a fixed pseudo-random sample of them
ESTIMATED_COMBINATIONS = 64


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


@lru_cache(maxsize=256)
def _op_parameters(name: str, config) -> float:
    """Parameters of one op, counted on the meta device (no memory); inf when the shapes overflow."""
    import torch
    from ..ops.registry import build_op
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            return float(sum(p.numel() for p in build_op(name, config).parameters()))
    except (RuntimeError, ValueError, OverflowError, MemoryError):
        return float("inf")


def supernet_parameters(supernet: Dict, vocab_size: int) -> float:
    """The parameter count of ``Supernet(SupernetConfig(vocab_size, **supernet))`` without building it:
    every searchable node holds every candidate op of its side, each decoder layer one fixed
    cross-attention, plus the embedding, the in/out projections and the output layer."""
    from ..search.supernet import SupernetConfig
    config = SupernetConfig(vocab_size=vocab_size, **supernet)
    total = 0.0
    for side, layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        op_config = config.op_config(causal=side == "decoder")
        per_node = sum(_op_parameters(op, op_config) for op in config.ops(side))
        total += layers * config.splits * per_node
        if side == "decoder":
            total += layers * _op_parameters("cross_attn", op_config)
    e, h, dh, v = config.embed_dim, config.hidden, config.decoder_hidden, vocab_size
    total += v * e + (e + 1) * h + (e + 1) * dh + (dh + 1) * e + v + 2 * (h + dh)
    if not config.tie_embeddings:
        total += e * v
    return total


def _trials(sweep) -> List[Dict]:
    """Space parameters of the trials to estimate: none (the fixed settings) and the space's extremes."""
    from .space import space_combinations
    if not any(p.sampled for p in sweep.space.values()):
        return [{}]
    return [{}] + space_combinations(sweep, ESTIMATED_COMBINATIONS, ESTIMATED_COMBINATIONS)


def trial_memory_estimate(sweep) -> Tuple[float, str]:
    """(bytes, what) of the largest search trial of the sweep: supernet training state plus the
    positions table, the largest over the fixed settings and the space's estimated combinations."""
    from .space import resolve_trial
    best, what = 0.0, ""
    for params in _trials(sweep):
        try:
            settings = resolve_trial(sweep, params, partial=not params)
        except ConfigError:
            continue   # the load-time combination check reports invalid ones
        s = settings.supernet
        n = supernet_parameters(s, settings.vocab_size)
        nbytes = n * TRAIN_BYTES_PER_PARAM + settings.max_len * s["embed_dim"] * 4
        if nbytes > best:
            trial = ", ".join(f"{k}={v}" for k, v in params.items())
            best = nbytes
            size = "too many parameters to count" if n == float("inf") else f"~{n:,.0f} parameters"
            what = (f"a supernet of {size} (hidden {s['hidden']}, splits {s['splits']}, "
                    f"{s['encoder_layers']}+{s['decoder_layers']} layers, vocab {settings.vocab_size}, "
                    f"max_len {settings.max_len}" + (f"; space trial: {trial}" if trial else "") + ")")
    return best, what


def check_capacity(sweep, cpus: float, gpus: float, memory: Optional[float], where: str,
                   total_cpus: Optional[float] = None, total_gpus: Optional[float] = None,
                   where_total: Optional[str] = None) -> None:
    """One ``ConfigError`` line when one trial of ``sweep`` cannot run on a node with ``cpus`` CPUs,
    ``gpus`` GPUs and ``memory`` bytes (None: unknown, not checked); ``where`` names that node
    ("this machine", "the largest node of the Ray cluster at ..."). A trial's ``resources.workers`` may
    spread over nodes: together they must fit ``total_cpus`` / ``total_gpus`` (default: that node's)."""
    r = sweep.resources
    src = sweep.source
    total_cpus = cpus if total_cpus is None else total_cpus
    total_gpus = gpus if total_gpus is None else total_gpus
    where_total = where_total or where
    if r.cpu > cpus:
        raise ConfigError(f"{src}: resources.cpu: each trial asks for {r.cpu:g} CPUs; {where} has {cpus:g}, "
                          f"so no trial could ever start")
    if r.gpu > gpus:
        raise ConfigError(f"{src}: resources.gpu: each trial asks for {r.gpu:g} GPU(s); {where} has "
                          f"{gpus:g}, so no trial could ever start")
    if r.workers * r.cpu > total_cpus:
        raise ConfigError(f"{src}: resources.workers: {r.workers} workers x {r.cpu:g} CPUs each need "
                          f"{r.workers * r.cpu:g} CPUs; {where_total} has {total_cpus:g}, so no trial could "
                          f"ever start")
    if r.workers * r.gpu > total_gpus:
        raise ConfigError(f"{src}: resources.workers: {r.workers} workers x {r.gpu:g} GPU(s) each need "
                          f"{r.workers * r.gpu:g} GPU(s); {where_total} has {total_gpus:g}, so no trial could "
                          f"ever start")
    if memory is None:
        return
    if sweep.data.kind == "synthetic" and sweep.data.synthetic:
        pairs = sum(sweep.data.synthetic[k] for k in ("train", "valid", "test"))
        need = pairs * BYTES_PER_SYNTHETIC_PAIR
        if need > memory:
            raise ConfigError(f"{src}: data.synthetic.train: {pairs:,} synthetic pairs need ~{_gib(need)} of "
                              f"memory (~{BYTES_PER_SYNTHETIC_PAIR} B a pair); {where} has {_gib(memory)}")
    need, what = trial_memory_estimate(sweep)
    if need > memory:
        if need == float("inf"):
            raise ConfigError(f"{src}: search: one trial would build {what}, which no memory holds; "
                              f"{where} has {_gib(memory)}")
        raise ConfigError(f"{src}: search: one trial needs ~{_gib(need)} for {what}: weights, gradients and "
                          f"Adam state at {TRAIN_BYTES_PER_PARAM} B a parameter and the max_len x embed_dim "
                          f"positions table, before activations; {where} has {_gib(memory)}")


def physical_memory() -> Optional[float]:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_local_capacity(sweep) -> None:
    """Before a local Ray starts: this machine's CPUs, GPUs (CUDA devices) and memory."""
    import torch
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    check_capacity(sweep, float(os.cpu_count() or 1), float(gpus), physical_memory(), "this machine")


def check_cluster_capacity(sweep, address: str) -> None:
    """After joining a cluster (``ray.init`` done), before stage 1: a trial runs on one node, so the
    largest alive node's CPUs, GPUs and memory are what one trial can get."""
    import ray
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        return

    def largest(key: str) -> float:
        return max(float(n.get(key, 0.0)) for n in nodes)

    memory = largest("memory") or None
    check_capacity(sweep, largest("CPU"), largest("GPU"), memory,
                   f"the largest node of the Ray cluster at {address}",
                   total_cpus=sum(float(n.get("CPU", 0.0)) for n in nodes),
                   total_gpus=sum(float(n.get("GPU", 0.0)) for n in nodes),
                   where_total=f"the Ray cluster at {address}")
