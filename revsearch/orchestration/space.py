"""The outer search space: a sweep's ``space`` section compiled for Optuna, and one trial's settings.

``define_by_run(sweep)`` returns the define-by-run function handed to
``ray.tune.search.optuna.OptunaSearch(space=...)``: it walks ``space`` in YAML order, calls
``trial.suggest_categorical / suggest_int / suggest_float(log=...)`` for sampled parameters, evaluates
``derived`` ones (recorded with ``trial.set_user_attr`` and returned as constants, so they reach the Tune
config too) and skips parameters whose ``when`` does not match. Tune's trial config then holds the
sampled and derived values of the active parameters; ``resolve_trial(sweep, config)`` merges them into
the fixed search settings and returns a validated ``TrialSettings``.

Derived expressions are arithmetic only (``safe_eval``: numbers, names, ``+ - * / // %``, unary
minus, parentheses), evaluated from the AST, never with ``eval``.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..errors import ConfigError
from ..search.bilevel import SearchConfig
from ..search.supernet import SupernetConfig
from .space_expr import expr_names, safe_eval
from .sweep_errors import is_int, is_number, quoted_value
from .sweep_search import SEARCH_SPACE_KEYS, SearchSection, search_problem
from .sweep_sections import data_problem
from .sweep_space_schema import DATA_SPACE_KEYS, SpaceParam, check_setting, setting_target

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from .sweep_model import SweepConfig

#: SupernetConfig keyword arguments taken from the search settings (plus ops and max_len)
SUPERNET_KEYS = ("hidden", "splits", "embed_dim", "encoder_layers", "decoder_layers", "heads", "dropout",
                 "pooling", "tie_embeddings", "mode", "cell_layers", "share_alpha")
SEARCH_CONFIG_KEYS = tuple(f.name for f in fields(SearchConfig))


# --- active parameters ----------------------------------------------------------------------------
def _default(sweep: SweepConfig, name: str) -> Any:
    param = sweep.space[name]
    if param.target == "search":
        return getattr(sweep.search, name)
    if param.target == "data":
        return getattr(sweep.data, name)
    raise KeyError(name)  # validation forbids reading a skipped helper


class _Lookup(Mapping):
    """Effective values: an active parameter's value, else the fixed setting it would override."""

    def __init__(self, sweep: SweepConfig, active: Dict[str, Any], allowed: List[str]):
        self.sweep, self.active, self.allowed = sweep, active, allowed

    def __getitem__(self, name):
        if name in self.active:
            return self.active[name]
        if name in self.allowed:
            return _default(self.sweep, name)
        raise KeyError(name)

    def __iter__(self):
        return iter(self.allowed)

    def __len__(self):
        return len(self.allowed)


def _matches(param: SpaceParam, lookup: Mapping[str, Any]) -> bool:
    return all(lookup[name] in wanted for name, wanted in param.when.items())


_SKIP = object()


def _walk(sweep: SweepConfig, sample: Callable[[SpaceParam], Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Visit the space in order; returns (active values, derived values). ``sample`` may return
    ``_SKIP`` (partial trial parameters): the parameter then counts as not sampled."""
    active: Dict[str, Any] = {}
    derived: Dict[str, Any] = {}
    seen: List[str] = []
    missing: List[str] = []
    for param in sweep.space.values():
        lookup = _Lookup(sweep, active, [n for n in seen if n not in missing])
        seen.append(param.name)
        reads = list(param.when) + (expr_names(param.expr) if not param.sampled else [])
        if any(name in missing for name in reads):
            if param.target is None:
                missing.append(param.name)
            continue
        if param.when and not _matches(param, lookup):
            if param.target is None:
                missing.append(param.name)
            continue
        if param.sampled:
            value = sample(param)
            if value is _SKIP:
                if param.target is None:
                    missing.append(param.name)
                continue
            active[param.name] = value
        else:
            try:
                value = safe_eval(param.expr, lookup)
            except ConfigError as e:
                raise ConfigError(f"{sweep.source}: space.{param.name}.expr: {e}") from None
            active[param.name] = derived[param.name] = value
    return active, derived


class DefineByRun:
    """``space(trial) -> dict of derived constants | None`` for ``OptunaSearch(space=...)``; picklable."""

    def __init__(self, sweep: SweepConfig):
        self.sweep = sweep

    def __call__(self, trial: "optuna.Trial") -> Optional[Dict[str, Any]]:
        def sample(p: SpaceParam):
            if p.type == "choice":
                return trial.suggest_categorical(p.name, list(p.values))
            if p.type == "int":
                return trial.suggest_int(p.name, p.low, p.high, step=p.step, log=p.log)
            return trial.suggest_float(p.name, float(p.low), float(p.high), log=p.type == "loguniform")

        _, derived = _walk(self.sweep, sample)
        for name, value in derived.items():
            trial.set_user_attr(name, value)
        return derived or None


def define_by_run(sweep: SweepConfig) -> Callable[["optuna.Trial"], Optional[Dict[str, Any]]]:
    return DefineByRun(sweep)


def _in_space(param: SpaceParam, value: Any) -> bool:
    if param.type == "choice":
        return any(value == v and (type(value) is type(v) or (is_number(value) and is_number(v)))
                   for v in param.values)
    if param.type == "int":
        return is_int(value) and param.low <= value <= param.high and (value - param.low) % param.step == 0
    return is_number(value) and param.low <= value <= param.high


def _same_number(a: Any, b: Any) -> bool:
    if not is_number(a):
        return False
    if a == b:
        return True
    try:
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    except OverflowError:
        return False


def _active_values(sweep: SweepConfig, params: Mapping[str, Any],
                   partial: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    def sample(p: SpaceParam):
        if p.name not in params and partial:
            return _SKIP
        if p.name not in params:
            raise ConfigError(f"{sweep.source}: space.{p.name}: missing from the trial parameters "
                              f"({', '.join(map(str, params)) or 'none given'})")
        value = params[p.name]
        if not partial and not _in_space(p, value):
            raise ConfigError(f"{sweep.source}: space.{p.name}: trial value {quoted_value(value)} is outside "
                              f"the parameter's {p.type} space")
        return value

    if not isinstance(params, Mapping):
        raise ConfigError(f"{sweep.source}: space: trial parameters must be a mapping, got {quoted_value(params)}")
    active, derived = _walk(sweep, sample)
    for name, value in derived.items():
        given = params.get(name, value)
        if not _same_number(given, value):
            raise ConfigError(f"{sweep.source}: space.{name}: trial value {quoted_value(given)} differs from "
                              f"its expression's value {quoted_value(value)}")
    return active, derived


def derived_params(sweep: SweepConfig, params: Mapping[str, Any]) -> Dict[str, Any]:
    """The derived values for sampled ``params`` (skipped conditional parameters left out)."""
    return _active_values(sweep, {k: v for k, v in params.items()
                                  if k not in sweep.space or sweep.space[k].sampled})[1]


# --- one trial ------------------------------------------------------------------------------------
@dataclass
class TrialSettings:
    """Everything a search trial needs, validated.

    ``supernet``: ``SupernetConfig`` keyword arguments except ``vocab_size`` (known once the tokenizer is
    trained; SentencePiece may give fewer pieces than asked), ops of the trial's op set and ``max_len``
    included. ``data``: the data settings a space may override (``vocab_size``, ``spm_model_type``,
    ``max_tokens``, ``arch_fraction``, ``max_len``; ``max_len`` is in token ids, bos/eos included, i.e.
    ``BatchConfig.max_positions``). ``params``: the trial's active sampled and derived values.
    """
    supernet: Dict[str, Any]
    search: SearchConfig
    data: Dict[str, Any]
    op_set: str
    steps: int
    report_every: int
    checkpoint_every: int
    valid_batches: int
    params: Dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.data["vocab_size"]

    @property
    def max_tokens(self) -> int:
        return self.data["max_tokens"]

    @property
    def max_len(self) -> int:
        return self.data["max_len"]

    def supernet_config(self, vocab_size: int) -> SupernetConfig:
        return SupernetConfig(vocab_size=vocab_size, **self.supernet)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["supernet"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.supernet.items()}
        out["search"] = {k: list(v) if isinstance(v, tuple) else v for k, v in out["search"].items()}
        return out


def _describe(active: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={quoted_value(v, 30)}" for k, v in active.items()) or "no space parameters"


def resolve_trial(sweep: SweepConfig, params: Mapping[str, Any], partial: bool = False) -> TrialSettings:
    """Merge a trial's sampled parameters into the fixed settings and validate the result.

    ``params`` is Tune's trial config: every active sampled parameter must be there with a value of its
    distribution; derived values are recomputed (a given one must agree); keys outside ``space`` are
    ignored. With ``partial=True`` (hand-made settings, e.g. ``revsearch retrain``) missing parameters
    count as not sampled, values need not lie in their distribution, and keys naming a search/data
    setting that is not in ``space`` override it too. Raises ``ConfigError`` when the combination is
    invalid, naming the setting and the trial."""
    active, _ = _active_values(sweep, params, partial=partial)
    if partial:
        extra = {k: v for k, v in params.items() if k not in active and isinstance(k, str)
                 and (k in SEARCH_SPACE_KEYS or k in DATA_SPACE_KEYS)}
        active = {**extra, **active}
    trial = _describe(active)
    search = {name: getattr(sweep.search, name) for name in SearchSection.model_fields}
    data = {k: getattr(sweep.data, k) for k in DATA_SPACE_KEYS}

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{sweep.source}: {key}: {message} (space trial: {trial})")

    for name, value in active.items():
        target = setting_target(name)
        if target is None:
            continue
        try:
            value = check_setting(target, name, value)
        except ValueError as e:
            raise fail(f"{target}.{name}", str(e)) from None
        (search if target == "search" else data)[name] = value
    if search["op_set"] not in sweep.op_sets and search["op_set"] != "full":
        raise fail("search.op_set", f"unknown op set {quoted_value(search['op_set'])}")
    for problem, section in ((search_problem(search), "search"), (data_problem(data), "data")):
        if problem:
            raise fail(f"{section}.{problem[0]}", problem[1])
    encoder_ops, decoder_ops = sweep.op_names(search["op_set"])
    supernet = {k: search[k] for k in SUPERNET_KEYS}
    supernet.update(encoder_ops=encoder_ops, decoder_ops=decoder_ops, max_len=data["max_len"])
    try:
        SupernetConfig(vocab_size=max(data["vocab_size"], 4), **supernet)
        search_config = SearchConfig(**{k: search[k] for k in SEARCH_CONFIG_KEYS if k in search})
    except (ConfigError, TypeError, ValueError) as e:
        raise fail("search", str(e)) from None
    return TrialSettings(supernet=supernet, search=search_config, data=data, op_set=search["op_set"],
                         steps=search["steps"], report_every=search["report_every"],
                         checkpoint_every=search["checkpoint_every"], valid_batches=search["valid_batches"],
                         params=dict(active))


# --- load-time check ------------------------------------------------------------------------------
MAX_ENUMERATED = 512
SAMPLED_CHECKS = 64


def candidate_values(param: SpaceParam) -> List[Any]:
    if param.type == "choice":
        return list(param.values)
    if param.type == "int":
        count = (param.high - param.low) // param.step + 1
        if count <= MAX_ENUMERATED:
            return list(range(param.low, param.high + 1, param.step))
        return [param.low, param.high]
    return [param.low, param.high]


def space_combinations(sweep: SweepConfig, limit: int, samples: int, with_first: bool = False) -> List[Dict]:
    """Space parameters of representative trials: every combination of the sampled parameters'
    candidate values (discrete values, range ends) when there are at most ``limit``, else ``samples``
    seeded pseudo-random ones, after the all-first-values combination when ``with_first``."""
    sampled = [p for p in sweep.space.values() if p.sampled]
    options = [candidate_values(p) for p in sampled]
    total = 1
    for values in options:
        total *= len(values)
        if total > limit:
            break
    if total <= limit:
        combos = list(itertools.product(*options))
    else:
        rng = random.Random(0)
        combos = ([tuple(values[0] for values in options)] if with_first else []) + [
            tuple(rng.choice(values) for values in options) for _ in range(samples)]
    return [dict(zip((p.name for p in sampled), combo)) for combo in combos]


def check_space_combinations(sweep: SweepConfig) -> None:
    """Resolve every combination of the space's discrete values and range ends (or, for a large
    space, a fixed pseudo-random sample of them) so an invalid combination fails at load time."""
    for params in space_combinations(sweep, MAX_ENUMERATED, SAMPLED_CHECKS, with_first=True):
        try:
            resolve_trial(sweep, params)
        except ConfigError as e:
            text = str(e)
            prefix = f"{sweep.source}: "
            raise ConfigError(f"{sweep.source}: space: an invalid combination can be sampled: "
                              f"{text[len(prefix):] if text.startswith(prefix) else text}") from None
