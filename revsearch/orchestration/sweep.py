"""The sweep file: one YAML document describing a whole two-stage experiment (search, then retrain).

``load_sweep(path)`` reads, validates, fills every default and resolves relative paths against the YAML
file's directory; ``validate_sweep_dict(data, source)`` does the same for an already-parsed mapping. Both
return a ``SweepConfig`` whose ``to_dict()`` is the fully resolved document (it validates back to an equal
config). Every problem is a ``ConfigError`` of one line: ``<file>: <dotted.key>: <what is allowed>``.
The schema is documented key by key in ``docs/sweep-reference.md``; the outer search space (``space``)
is compiled for Optuna in ``revsearch.orchestration.space``.
"""
from __future__ import annotations

import difflib
import math
import os
import re
import reprlib
import stat
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from ..data.synthetic import SyntheticConfig
from ..errors import ConfigError, RevsearchError
from ..ops.registry import DECODER_OPS, ENCODER_OPS, validate_op_names
from ..search.bilevel import SearchConfig
from ..search.supernet import SupernetConfig

DATA_KINDS = ("synthetic", "corpus", "wmt14")
WMT14_PAIRS = ("en-de", "en-fr", "en-cs")
SYNTHETIC_LANGS = ("en", "de")
FULL_OP_SET = "full"
SPACE_TYPES = ("choice", "int", "uniform", "loguniform", "derived")
#: what the search trainable reports at every report (a sweep's objective must be among these)
SEARCH_METRICS = ("valid_loss", "train_loss", "arch_loss", "alpha_entropy", "param_free_share", "alpha_margin",
                  "alpha_margin_min", "params", "steps_per_s",
                  "search_seconds", "trial_wall_seconds", "peak_rss_bytes", "cuda_max_allocated_bytes",
                  "proxy_valid_bleu", "proxy_valid_loss")
#: reported once, at a search trial's end, by its short equal-size retrain (search.proxy_retrain)
PROXY_METRICS = ("proxy_valid_bleu", "proxy_valid_loss")
SCHEDULER_TYPES = ("none", "asha")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
LANG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,15}$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,199}$")
URI_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
INT64_MAX = 2 ** 63 - 1

_SN = {f.name: f.default for f in fields(SupernetConfig)}
_SC = {f.name: f.default for f in fields(SearchConfig)}
_SY = {f.name: f.default for f in fields(SyntheticConfig)}


# --- value rules ----------------------------------------------------------------------------------
class _Bad(Exception):
    """A problem with one value, without its location (the caller adds file and key)."""


def show(value: Any, limit: int = 60) -> str:
    """A short one-line repr for messages. Bounded work: containers are cut before they are rendered
    (a value built from YAML aliases can stand for billions of elements; its full repr would never end)."""
    shower = reprlib.Repr()
    shower.maxlevel, shower.maxlist, shower.maxtuple, shower.maxdict = 3, 8, 8, 8
    shower.maxset = shower.maxfrozenset = shower.maxdeque = shower.maxarray = 8
    shower.maxstring = shower.maxother = shower.maxlong = max(limit, 8)
    try:
        text = shower.repr(value)
    except Exception:  # a broken __repr__ (or an int too long to print) must not turn into a traceback
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


@dataclass(frozen=True)
class Rule:
    """The type and range of one setting; ``check`` returns the normalized value or raises ``_Bad``."""
    kind: str                          # int | float | bool | str
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    choices: Tuple[str, ...] = ()
    nullable: bool = False
    pattern: Optional[re.Pattern] = None
    what: str = ""                     # description of a pattern-checked string

    def describe(self) -> str:
        if self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = ("one of: " + ", ".join(self.choices)) if self.choices else (self.what or "a string")
        else:
            noun = "an integer" if self.kind == "int" else "a number"
            lo, hi = self.low, self.high
            if lo is not None and hi is not None:
                text = (f"{noun} in {'(' if self.low_open else '['}{_num(lo)}, "
                        f"{_num(hi)}{')' if self.high_open else ']'}")
            elif lo is not None:
                text = f"{noun} {'>' if self.low_open else '>='} {_num(lo)}"
            elif hi is not None:
                text = f"{noun} {'<' if self.high_open else '<='} {_num(hi)}"
            else:
                text = noun
        return f"null or {text}" if self.nullable else text

    def check(self, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        bad = _Bad(f"must be {self.describe()}, got {show(value)}")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise bad
            if self.choices and value not in self.choices:
                hint = difflib.get_close_matches(value, self.choices, n=1)
                raise _Bad(f"must be {self.describe()}, got {show(value)}"
                           + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            if self.pattern is not None and not self.pattern.match(value):
                raise bad
            return value
        if self.kind == "int":
            if not is_int(value) or abs(value) > INT64_MAX:
                raise bad
            x = value
        else:
            if not is_number(value):
                raise bad
            try:
                x = float(value)
            except OverflowError:
                raise bad from None
            if not math.isfinite(x):
                raise bad
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            raise bad
        if self.high is not None and (x > self.high or (self.high_open and x == self.high)):
            raise bad
        return x


def INT(low=None, high=None, nullable=False) -> Rule:
    return Rule("int", low, high, nullable=nullable)


def FLOAT(low=None, high=None, low_open=False, high_open=False, nullable=False) -> Rule:
    return Rule("float", low, high, low_open, high_open, nullable=nullable)


BOOL = Rule("bool")


def ONE_OF(*choices: str) -> Rule:
    return Rule("str", choices=tuple(choices))


PROBABILITY = FLOAT(0.0, 1.0)
FRACTION = FLOAT(0.0, 1.0, high_open=True)          # dropout, label smoothing: [0, 1)


# --- sections -------------------------------------------------------------------------------------
class _Section:
    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass
class DataSection(_Section):
    kind: str = "synthetic"
    synthetic: Optional[Dict[str, Any]] = None   # SyntheticConfig fields (kind synthetic), all filled
    path: Optional[str] = None                   # absolute (kind corpus)
    src_lang: Optional[str] = None
    tgt_lang: Optional[str] = None
    pair: Optional[str] = None                   # kind wmt14
    vocab_size: int = 1000
    spm_model_type: str = "unigram"
    max_tokens: int = 2048
    arch_fraction: float = 0.5
    max_len: int = 128

    def synthetic_config(self) -> SyntheticConfig:
        return SyntheticConfig(**(self.synthetic or {}))


@dataclass
class SearchSection(_Section):
    steps: int = 300
    report_every: int = 50
    checkpoint_every: int = 100
    valid_batches: int = 4
    hidden: int = _SN["hidden"]
    splits: int = _SN["splits"]
    embed_dim: int = _SN["embed_dim"]
    encoder_layers: int = _SN["encoder_layers"]
    decoder_layers: int = _SN["decoder_layers"]
    cell_layers: Optional[int] = _SN["cell_layers"]
    share_alpha: bool = _SN["share_alpha"]
    heads: int = _SN["heads"]
    dropout: float = _SN["dropout"]
    pooling: str = _SN["pooling"]
    mode: str = _SN["mode"]
    tie_embeddings: bool = _SN["tie_embeddings"]
    op_set: str = FULL_OP_SET
    lr: float = _SC["lr"]
    warmup_steps: int = _SC["warmup_steps"]
    betas: Tuple[float, float] = _SC["betas"]
    alpha_lr: float = _SC["alpha_lr"]
    alpha_weight_decay: float = _SC["alpha_weight_decay"]
    alpha_betas: Optional[Tuple[float, float]] = _SC["alpha_betas"]   # None: the same as betas
    alpha_warmup_steps: int = _SC["alpha_warmup_steps"]
    label_smoothing: float = _SC["label_smoothing"]
    clip_norm: float = _SC["clip_norm"]
    second_order: bool = _SC["second_order"]
    finite_difference_scale: float = _SC["finite_difference_scale"]
    derive_allow_zero: bool = _SC["derive_allow_zero"]
    # a short equal-size retrain of the trial's genotype at its end (objective proxy_valid_bleu/_loss);
    # None: none. Keys: PROXY_RULES
    proxy_retrain: Optional[Dict[str, Any]] = None


@dataclass
class SpaceParam:
    """One entry of ``space``. ``target`` is "search" / "data" for a setting it overrides, None for a
    helper only read by ``derived`` expressions or ``when`` conditions."""
    name: str
    type: str
    values: Optional[List[Any]] = None     # choice
    low: Optional[Union[int, float]] = None
    high: Optional[Union[int, float]] = None
    step: Optional[int] = None             # int (default 1)
    log: bool = False                      # int (loguniform is always log)
    expr: Optional[str] = None             # derived
    when: Dict[str, List[Any]] = field(default_factory=dict)
    target: Optional[str] = None

    @property
    def sampled(self) -> bool:
        return self.type != "derived"

    def to_dict(self) -> dict:
        out: Dict[str, Any] = {"type": self.type}
        if self.type == "choice":
            out["values"] = list(self.values)
        elif self.type == "derived":
            out["expr"] = self.expr
        else:
            out["low"], out["high"] = self.low, self.high
            if self.type == "int":
                out["step"], out["log"] = self.step, self.log
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        return out


@dataclass
class ObjectiveSection(_Section):
    metric: Union[str, List[str]] = "valid_loss"
    mode: Union[str, List[str]] = "min"

    @property
    def metrics(self) -> List[str]:
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> List[str]:
        return list(self.mode) if isinstance(self.mode, list) else [self.mode]

    @property
    def multi(self) -> bool:
        return isinstance(self.metric, list)


@dataclass
class SchedulerSection(_Section):
    type: str = "none"
    grace_period: int = 1            # in reports (asha)
    reduction_factor: float = 4.0
    max_t: Optional[int] = None      # in reports; None: SweepConfig.max_reports


@dataclass
class ResourcesSection(_Section):
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass
class RetrainSection(_Section):
    top_k: int = 2
    steps: Optional[int] = 600
    budget_minutes: Optional[float] = None
    baseline: bool = True
    hidden: Optional[int] = None      # None: the search trial's hidden
    encoder_layers: int = 2
    decoder_layers: int = 2
    dropout: Optional[float] = None   # None: the search trial's dropout
    label_smoothing: float = 0.1
    lr: float = 1e-3
    warmup_steps: int = 100
    max_tokens: int = 2048
    beam: int = 4
    length_penalty: float = 1.0
    average_last: int = 1
    validate_every: int = 200
    seeds: Optional[List[int]] = None  # every candidate is retrained once per seed; None: [seed]
    # equal-size retraining (search/sizing.py): match params (every model sized to one parameter count;
    # params null = the Transformer baseline's count at the retrain width/depth) or width (same hidden)
    size: Dict[str, Any] = field(default_factory=lambda: dict(SIZE_DEFAULTS))
    random_genotypes: int = 0          # the sampling baseline: k uniform random genotypes, same budget


@dataclass
class TrackingSection(_Section):
    """As written (None = default); ``SweepConfig.tracking_uri`` etc. give the resolved values, computed
    from the current ``storage`` / ``name`` (so a ``--storage`` override moves the default database)."""
    uri: Optional[str] = None         # None: sqlite:////<storage>/mlflow.db
    experiment: Optional[str] = None  # None: the sweep name
    registered_model: Optional[str] = None   # None: revsearch-<name>


DATA_RULES: Dict[str, Rule] = {
    "kind": ONE_OF(*DATA_KINDS),
    "vocab_size": INT(8),
    "spm_model_type": ONE_OF("unigram", "bpe"),
    "max_tokens": INT(1),
    "arch_fraction": FLOAT(0.0, 1.0, low_open=True, high_open=True),
    "max_len": INT(4),
}
DATA_KEYS = ("kind", "synthetic", "path", "src_lang", "tgt_lang", "pair", "vocab_size", "spm_model_type",
             "max_tokens", "arch_fraction", "max_len")
#: data settings a space parameter may override
DATA_SPACE_KEYS = ("vocab_size", "spm_model_type", "max_tokens", "arch_fraction", "max_len")

SYNTHETIC_RULES: Dict[str, Rule] = {
    "train": INT(2), "valid": INT(1), "test": INT(1), "seed": INT(0), "min_words": INT(3),
    "max_words": INT(3),
    **{k: PROBABILITY for k in _SY if k.startswith("p_")},
}
assert set(SYNTHETIC_RULES) == set(_SY), "SyntheticConfig gained a field: add its rule"

SEARCH_RULES: Dict[str, Rule] = {
    "steps": INT(1), "report_every": INT(1), "checkpoint_every": INT(1), "valid_batches": INT(1),
    "hidden": INT(1), "splits": INT(2), "embed_dim": INT(1), "encoder_layers": INT(1),
    "decoder_layers": INT(1), "cell_layers": INT(1, nullable=True), "share_alpha": BOOL,
    "heads": INT(1), "dropout": FRACTION, "pooling": ONE_OF("max", "mean"),
    "mode": ONE_OF("reversible", "plain", "checkpoint"), "tie_embeddings": BOOL,
    "op_set": Rule("str", pattern=NAME_RE, what="an op set name"),
    "lr": FLOAT(0.0, low_open=True), "warmup_steps": INT(0), "alpha_lr": FLOAT(0.0, low_open=True),
    "alpha_weight_decay": FLOAT(0.0), "label_smoothing": FRACTION, "clip_norm": FLOAT(0.0),
    "second_order": BOOL, "finite_difference_scale": FLOAT(0.0, low_open=True),
    "alpha_warmup_steps": INT(0), "derive_allow_zero": BOOL,
}
SEARCH_KEYS = tuple(f.name for f in fields(SearchSection))
#: Adam betas pairs: checked by their own code, fixed per sweep (a pair cannot be a space parameter)
SEARCH_PAIR_KEYS = ("betas", "alpha_betas")
#: search settings a space parameter may override (all but the optimizers' betas pairs)
#: search settings that are mappings, checked by their own rules (never space parameters)
SEARCH_NESTED_KEYS = ("proxy_retrain",)
SEARCH_SPACE_KEYS = tuple(k for k in SEARCH_KEYS if k not in SEARCH_PAIR_KEYS + SEARCH_NESTED_KEYS)
PROXY_RULES = {"steps": INT(1), "max_tokens": INT(1, nullable=True), "lr": FLOAT(0.0, low_open=True, nullable=True),
               "valid_sentences": INT(1), "beam": INT(1)}
PROXY_DEFAULTS = {"steps": 200, "max_tokens": None, "lr": None, "valid_sentences": 200, "beam": 1}
assert set(SEARCH_RULES) == set(SEARCH_SPACE_KEYS)

SCHEDULER_RULES = {"type": ONE_OF(*SCHEDULER_TYPES), "grace_period": INT(1),
                   "reduction_factor": FLOAT(1.0, low_open=True), "max_t": INT(1, nullable=True)}
RESOURCES_RULES = {"cpu": FLOAT(0.0, low_open=True), "gpu": FLOAT(0.0)}
#: more random genotypes than this is a different experiment (a random search), not a baseline
MAX_RANDOM_GENOTYPES = 64
RETRAIN_RULES = {
    "top_k": INT(0), "steps": INT(1, nullable=True), "budget_minutes": FLOAT(0.0, low_open=True, nullable=True),
    "baseline": BOOL, "hidden": INT(1, nullable=True), "encoder_layers": INT(1), "decoder_layers": INT(1),
    "dropout": Rule("float", 0.0, 1.0, high_open=True, nullable=True), "label_smoothing": FRACTION,
    "lr": FLOAT(0.0, low_open=True), "warmup_steps": INT(0), "max_tokens": INT(1), "beam": INT(1),
    "length_penalty": FLOAT(0.0), "average_last": INT(1), "validate_every": INT(0),
    "random_genotypes": INT(0, MAX_RANDOM_GENOTYPES),
}
#: search trials of one sweep (each trains a supernet; Tune keeps every trial's state in memory)
MAX_NUM_SAMPLES = 10_000
#: values of one ``choice`` parameter (the load-time combination check and Optuna enumerate them)
MAX_CHOICE_VALUES = 10_000
#: retrain keys checked by their own code instead of a one-value rule
RETRAIN_NESTED_KEYS = ("seeds", "size")
SIZE_RULES = {"match": ONE_OF("params", "width"), "params": INT(1, nullable=True),
              "tolerance": FLOAT(0.0, 1.0, low_open=True, high_open=True)}
SIZE_DEFAULTS = {"match": "params", "params": None, "tolerance": 0.03}
MAX_SEEDS = 32
TOP_KEYS = ("name", "seed", "storage", "data", "search", "op_sets", "space", "objective", "num_samples",
            "max_concurrent", "scheduler", "resources", "retrain", "tracking")
SPACE_PARAM_KEYS = {"choice": ("type", "values", "when"),
                    "int": ("type", "low", "high", "step", "log", "when"),
                    "uniform": ("type", "low", "high", "when"),
                    "loguniform": ("type", "low", "high", "when"),
                    "derived": ("type", "expr", "when")}


def setting_rule(target: str, key: str) -> Rule:
    return SEARCH_RULES[key] if target == "search" else DATA_RULES[key]


def search_problem(values: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    """Cross-field rules of the search settings: (key, message) of the first broken one."""
    if values["hidden"] % values["splits"]:
        return "hidden", (f"must be divisible by search.splits ({values['splits']}), "
                          f"got {values['hidden']}")
    if values["report_every"] > values["steps"]:
        return "report_every", f"must be <= search.steps ({values['steps']}), got {values['report_every']}"
    if values["checkpoint_every"] % values["report_every"]:
        return "checkpoint_every", (f"must be a multiple of search.report_every ({values['report_every']}), "
                                    f"got {values['checkpoint_every']}")
    if values["alpha_warmup_steps"] >= values["steps"]:
        return "alpha_warmup_steps", (f"must be < search.steps ({values['steps']}): α would never move and "
                                      f"the genotype would be the argmax of its random init, "
                                      f"got {values['alpha_warmup_steps']}")
    return None


def data_problem(values: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    if values["max_tokens"] < values["max_len"]:
        return "max_tokens", (f"must be >= data.max_len ({values['max_len']}) so the longest pair fits "
                              f"a batch, got {values['max_tokens']}")
    return None


# --- the config -----------------------------------------------------------------------------------
@dataclass
class SweepConfig:
    name: str
    seed: int = 0
    storage: str = ""                                   # absolute
    data: DataSection = field(default_factory=DataSection)
    search: SearchSection = field(default_factory=SearchSection)
    op_sets: Dict[str, Dict[str, Tuple[str, ...]]] = field(default_factory=dict)   # "full" not stored
    space: Dict[str, SpaceParam] = field(default_factory=dict)                      # YAML order
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    num_samples: int = 4
    max_concurrent: int = 2
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    retrain: RetrainSection = field(default_factory=RetrainSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    source: str = field(default="<sweep>", compare=False)   # the file (or label) errors name

    # convenience ------------------------------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        """``tracking.uri``, or ``sqlite:////<storage>/mlflow.db`` (absolute) when it is null."""
        if self.tracking.uri is not None:
            return self.tracking.uri
        return "sqlite:///" + os.path.join(os.path.abspath(self.storage), "mlflow.db")

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment if self.tracking.experiment is not None else self.name

    @property
    def registered_model_name(self) -> str:
        if self.tracking.registered_model is not None:
            return self.tracking.registered_model
        return f"revsearch-{self.name}"

    @property
    def max_reports(self) -> int:
        """Reports of a trial with the fixed search settings (ASHA's max_t when not given)."""
        if self.scheduler.max_t is not None:
            return self.scheduler.max_t
        return -(-self.search.steps // self.search.report_every)

    def op_names(self, op_set: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        """(encoder ops, decoder ops) of a named op set ("full" = every op)."""
        if op_set == FULL_OP_SET:
            return ENCODER_OPS, DECODER_OPS
        entry = self.op_sets[op_set]
        return entry["encoder"], entry["decoder"]

    def to_dict(self) -> dict:
        """The fully resolved document (plain YAML/JSON types); ``validate_sweep_dict`` accepts it back."""
        scheduler = self.scheduler.to_dict()
        if self.scheduler.type == "none":
            scheduler = {"type": "none"}
        return {
            "name": self.name, "seed": self.seed, "storage": self.storage,
            "data": self.data.to_dict(), "search": self.search.to_dict(),
            "op_sets": {k: {"encoder": list(v["encoder"]), "decoder": list(v["decoder"])}
                        for k, v in self.op_sets.items()},
            "space": {k: p.to_dict() for k, p in self.space.items()},
            "objective": {"metric": _plain(self.objective.metric), "mode": _plain(self.objective.mode)},
            "num_samples": self.num_samples, "max_concurrent": self.max_concurrent,
            "scheduler": scheduler, "resources": self.resources.to_dict(),
            "retrain": self.retrain.to_dict(),
            "tracking": {"uri": self.tracking_uri, "experiment": self.experiment_name,
                         "registered_model": self.registered_model_name},
        }


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- reading --------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """Safe YAML with duplicate keys rejected, ``1e-4`` read as a float (YAML 1.1 wants ``1.0e-4``) and
    dates left as strings."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: a sweep file is a few KB; these bound what reading one may cost (memory and time) whatever it holds
MAX_SWEEP_BYTES = 1 << 20
#: YAML nodes after expanding aliases: ~100 in a real sweep, ~10,000 with the largest choice allowed
MAX_YAML_NODES = 200_000


def _expanded_nodes(root: yaml.Node, budget: int) -> int:
    """How many nodes the document has with every alias expanded (an anchor used n times counts n
    times), computed over the shared node graph without expanding it; stops counting past ``budget``.
    Raises ``ValueError`` for a recursive alias (an anchor used inside itself)."""
    done: Dict[int, int] = {}
    open_nodes = set()            # expanded but not finished: exactly the path from the root
    stack = [root]
    while stack:
        node = stack[-1]
        key = id(node)
        if key in done:
            stack.pop()
            continue
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if key not in open_nodes:
            open_nodes.add(key)
            for child in children:
                if id(child) in open_nodes:
                    raise ValueError(f"recursive alias at line {child.start_mark.line + 1}: an anchor is "
                                     f"used inside its own value")
                if id(child) not in done:
                    stack.append(child)
            continue
        open_nodes.discard(key)
        done[key] = min(budget + 1, 1 + sum(done[id(c)] for c in children))
        stack.pop()
    return done[id(root)]


def parse_yaml_text(text: str, source: str) -> Any:
    loader = None
    try:
        loader = _Loader(text)   # the reader checks the characters here already
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            count = _expanded_nodes(node, MAX_YAML_NODES)
        except ValueError as e:
            raise ConfigError(f"{source}: invalid YAML: {e}") from None
        if count > MAX_YAML_NODES:
            raise ConfigError(f"{source}: invalid YAML: more than {MAX_YAML_NODES:,} values (with every alias "
                              f"*name expanded); a sweep file has a few hundred") from None
        return loader.construct_document(node)
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(x for x in (e.context, e.problem) if x) or "syntax error"
        raise ConfigError(f"{source}: invalid YAML{where}: {_one_line(what)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    except Exception as e:  # ReaderError (control characters), constructor ValueErrors, ...
        raise ConfigError(f"{source}: invalid YAML: {_one_line(e) or type(e).__name__}") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_sweep(path: Union[str, os.PathLike]) -> SweepConfig:
    """Read, validate and resolve a sweep file. Relative paths inside resolve against its directory."""
    source = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO without a writer returns at once instead of blocking forever; only a
        # regular file is read, and never more than MAX_SWEEP_BYTES (/dev/zero would fill the memory)
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"{source}: sweep file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, expected a sweep YAML file") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read sweep file: {_one_line(e.strerror or e)}") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        os.close(fd)
        raise ConfigError(f"{source}: is a directory, expected a sweep YAML file")
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                    else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "not a regular file")
            raise ConfigError(f"{source}: is {kind}, expected a sweep YAML file (a regular file)")
        try:
            raw = f.read(MAX_SWEEP_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"{source}: cannot read sweep file: {_one_line(e.strerror or e)}") from None
    if len(raw) > MAX_SWEEP_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_SWEEP_BYTES // 1024} KiB; a sweep file is a few KB "
                          f"(is this the right file?)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    data = parse_yaml_text(text, source)
    if data is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping with at least 'name'")
    return validate_sweep_dict(data, source, base_dir=os.path.dirname(os.path.abspath(source)))


def validate_sweep_dict(data: Any, source: str, base_dir: Optional[str] = None) -> SweepConfig:
    """Validate a parsed sweep document. Relative paths resolve against ``base_dir`` (default: the
    directory of ``source``, i.e. the working directory for a bare label)."""
    source = _one_line(source, 200) or "<sweep>"
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source))
    try:
        config = _Validator(source, base_dir).sweep(data)
        from .space import check_space_combinations
        check_space_combinations(config)
        return config
    except ConfigError:
        raise
    except RevsearchError as e:
        raise ConfigError(f"{source}: {_one_line(e)}") from None
    except Exception as e:  # a safety net: a bad document must never surface as a traceback
        raise ConfigError(f"{source}: invalid sweep (internal validation error {type(e).__name__}: "
                          f"{_one_line(e, 120)})") from None


def dotted(path: Sequence[Any]) -> str:
    parts = []
    for p in path:
        if isinstance(p, int) and not isinstance(p, bool):
            parts.append(f"[{p}]")
        elif isinstance(p, str) and re.fullmatch(r"[A-Za-z0-9_-]+", p):
            parts.append(("." if parts else "") + p)
        else:
            parts.append(("." if parts else "") + show(p, 40))
    return "".join(parts)


class _Validator:
    def __init__(self, source: str, base_dir: str):
        self.src, self.base_dir = source, base_dir

    # helpers ------------------------------------------------------------------------------------
    def err(self, path: Sequence[Any], message: str) -> ConfigError:
        return ConfigError(f"{self.src}: {dotted(path)}: {message}" if path else f"{self.src}: {message}")

    def mapping(self, value: Any, path: Tuple, allowed: Sequence[str], none_ok: bool = True) -> dict:
        if value is None and none_ok:
            return {}
        if not isinstance(value, dict):
            raise self.err(path, f"must be a mapping with keys {', '.join(allowed)}, got {show(value)}")
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1) if isinstance(key, str) else []
                raise self.err(path + (key,), "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                               + f"; allowed: {', '.join(allowed)}")
        return value

    def check(self, rule: Rule, value: Any, path: Tuple) -> Any:
        try:
            return rule.check(value)
        except _Bad as e:
            raise self.err(path, str(e)) from None

    def section(self, m: dict, path: Tuple, rules: Mapping[str, Rule], defaults: Mapping[str, Any]) -> dict:
        return {k: self.check(rule, m.get(k, defaults[k]), path + (k,)) for k, rule in rules.items()}

    def path_value(self, value: Any, path: Tuple) -> str:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise self.err(path, f"must be a directory path, got {show(value)}")
        if URI_SCHEME_RE.match(value) and not re.match(r"^[A-Za-z]:[\\/]", value):
            raise self.err(path, f"must be a local (or shared-filesystem) directory path, got {show(value)}")
        return os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(value)))

    # top level ----------------------------------------------------------------------------------
    def sweep(self, data: Any) -> SweepConfig:
        if not isinstance(data, dict):
            raise self.err((), f"the top level must be a mapping of sections ({', '.join(TOP_KEYS)}), "
                               f"got {type(data).__name__}")
        self.mapping(data, (), TOP_KEYS)
        if "name" not in data:
            raise self.err(("name",), "required: the experiment name (letters, digits, -, _)")
        name = self.check(Rule("str", pattern=NAME_RE, what="a name of letters, digits, - and _ "
                                                              "(at most 100, starting with a letter or digit)"),
                          data["name"], ("name",))
        seed = self.check(INT(0, 2 ** 32 - 1), data.get("seed", 0), ("seed",))
        storage = data.get("storage")
        storage = self.path_value(os.path.join("runs", name) if storage is None else storage, ("storage",))
        data_section = self.data(data.get("data"))
        op_sets = self.op_sets(data.get("op_sets"))
        search = self.search(data.get("search"), op_sets)
        space = self.space(data.get("space"), search, data_section, op_sets)
        objective = self.objective(data.get("objective"))
        num_samples = self.check(INT(1, MAX_NUM_SAMPLES), data.get("num_samples", 4), ("num_samples",))
        max_concurrent = self.check(INT(1), data.get("max_concurrent", 2), ("max_concurrent",))
        scheduler = self.scheduler(data.get("scheduler"))
        self.proxy_objective(objective, search, scheduler)
        resources = ResourcesSection(**self.section(
            self.mapping(data.get("resources"), ("resources",), tuple(RESOURCES_RULES)), ("resources",),
            RESOURCES_RULES, {"cpu": 1.0, "gpu": 0.0}))
        retrain = self.retrain(data.get("retrain"), num_samples, search, space)
        tracking = self.tracking(data.get("tracking"))
        return SweepConfig(name=name, seed=seed, storage=storage, data=data_section, search=search,
                           op_sets=op_sets, space=space, objective=objective, num_samples=num_samples,
                           max_concurrent=max_concurrent, scheduler=scheduler, resources=resources,
                           retrain=retrain, tracking=tracking, source=self.src)

    # data ---------------------------------------------------------------------------------------
    def data(self, raw: Any) -> DataSection:
        p = ("data",)
        m = self.mapping(raw, p, DATA_KEYS)
        defaults = {f.name: f.default for f in fields(DataSection)}
        values = self.section(m, p, DATA_RULES, defaults)
        kind = values["kind"]
        problem = data_problem(values)
        if problem:
            raise self.err(p + (problem[0],), problem[1])

        def only_for(key: str, wanted: str) -> None:
            if m.get(key) is not None and kind != wanted:
                raise self.err(p + (key,), f"only allowed with data.kind {wanted} (data.kind is {kind})")

        only_for("synthetic", "synthetic")
        only_for("path", "corpus")
        only_for("pair", "wmt14")
        lang_rule = Rule("str", pattern=LANG_RE, nullable=True, what="a language code such as en")
        src = self.check(lang_rule, m.get("src_lang"), p + ("src_lang",))
        tgt = self.check(lang_rule, m.get("tgt_lang"), p + ("tgt_lang",))
        synthetic = path = pair = None
        if kind == "synthetic":
            sm = self.mapping(m.get("synthetic"), p + ("synthetic",), tuple(SYNTHETIC_RULES))
            synthetic = self.section(sm, p + ("synthetic",), SYNTHETIC_RULES, _SY)
            if synthetic["max_words"] < synthetic["min_words"]:
                raise self.err(p + ("synthetic", "max_words"),
                               f"must be >= data.synthetic.min_words ({synthetic['min_words']}), "
                               f"got {synthetic['max_words']}")
            fixed = SYNTHETIC_LANGS
        elif kind == "wmt14":
            pair = self.check(ONE_OF(*WMT14_PAIRS), m.get("pair", "en-de"), p + ("pair",))
            fixed = tuple(pair.split("-"))
        else:
            if m.get("path") is None:
                raise self.err(p + ("path",), "required with data.kind corpus: a directory holding "
                                              "{train,valid,test}.{src_lang,tgt_lang}")
            path = self.path_value(m["path"], p + ("path",))
            fixed = None
        if fixed is not None:
            for key, given, want in (("src_lang", src, fixed[0]), ("tgt_lang", tgt, fixed[1])):
                if given is not None and given != want:
                    raise self.err(p + (key,), f"must be {want!r} for data.kind {kind}"
                                               + (f" {pair}" if pair else "") + f", got {show(given)}")
            src, tgt = fixed
        elif src is not None and src == tgt:
            raise self.err(p + ("tgt_lang",), f"must differ from data.src_lang, got {show(tgt)}")
        return DataSection(kind=kind, synthetic=synthetic, path=path, src_lang=src, tgt_lang=tgt, pair=pair,
                           **{k: values[k] for k in DATA_SPACE_KEYS})

    # op sets and search -------------------------------------------------------------------------
    def op_sets(self, raw: Any) -> Dict[str, Dict[str, Tuple[str, ...]]]:
        p = ("op_sets",)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.err(p, f"must be a mapping of op set name -> {{encoder: [...], decoder: [...]}}, "
                              f"got {show(raw)}")
        out = {}
        for name, entry in raw.items():
            if name == FULL_OP_SET:
                raise self.err(p + (name,), "'full' is built in (every op) and cannot be redefined")
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise self.err(p + (name,), "op set names must be letters, digits, - and _")
            m = self.mapping(entry, p + (name,), ("encoder", "decoder"), none_ok=False)
            sets = {}
            for side, full in (("encoder", ENCODER_OPS), ("decoder", DECODER_OPS)):
                ops = m.get(side, list(full))
                where = p + (name, side)
                if not isinstance(ops, list):
                    raise self.err(where, f"must be a list of op names, got {show(ops)}")
                for i, op in enumerate(ops):
                    if not isinstance(op, str):
                        raise self.err(where + (i,), f"must be an op name ({', '.join(full)}), got {show(op)}")
                try:
                    sets[side] = validate_op_names(ops, decoder=side == "decoder")
                except ConfigError as e:
                    raise self.err(where, _one_line(e)) from None
            out[name] = sets
        return out

    def search(self, raw: Any, op_sets: dict) -> SearchSection:
        p = ("search",)
        m = self.mapping(raw, p, SEARCH_KEYS)
        defaults = {f.name: f.default for f in fields(SearchSection)}
        values = self.section(m, p, SEARCH_RULES, defaults)
        self.op_set_ref(values["op_set"], op_sets, p + ("op_set",))
        for key in SEARCH_PAIR_KEYS:
            pair = m.get(key, defaults[key])
            if pair is None and key == "alpha_betas":   # null: α uses θ's betas
                values[key] = None
                continue
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                null = "null (the same as betas) or " if key == "alpha_betas" else ""
                raise self.err(p + (key,), f"must be {null}a list of two numbers in [0, 1), got {show(pair)}")
            values[key] = tuple(self.check(FRACTION, b, p + (key, i)) for i, b in enumerate(pair))
        raw_proxy = m.get("proxy_retrain")
        if raw_proxy is not None:
            pm = self.mapping(raw_proxy, p + ("proxy_retrain",), tuple(PROXY_RULES))
            values["proxy_retrain"] = self.section(pm, p + ("proxy_retrain",), PROXY_RULES, PROXY_DEFAULTS)
        problem = search_problem(values)
        if problem:
            raise self.err(p + (problem[0],), problem[1])
        return SearchSection(**values)

    def op_set_ref(self, name: Any, op_sets: dict, path: Tuple) -> None:
        known = (FULL_OP_SET,) + tuple(op_sets)
        if name not in known:
            raise self.err(path, f"unknown op set {show(name)}; defined: {', '.join(known)}")

    # space --------------------------------------------------------------------------------------
    def space(self, raw: Any, search: SearchSection, data: DataSection, op_sets: dict) -> Dict[str, SpaceParam]:
        from .space import expr_names
        p = ("space",)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.err(p, f"must be a mapping of parameter name -> {{type: ...}}, got {show(raw)}")
        for name in raw:
            if not isinstance(name, str) or not PARAM_RE.match(name):
                raise self.err(p + (name,), "parameter names must be identifiers (letters, digits, _; "
                                            "not starting with a digit)")
        params: Dict[str, SpaceParam] = {}
        referenced = set()
        for name, spec in raw.items():
            where = p + (name,)
            target = "search" if name in SEARCH_SPACE_KEYS else "data" if name in DATA_SPACE_KEYS else None
            if not isinstance(spec, dict):
                raise self.err(where, f"must be a mapping with a type ({', '.join(SPACE_TYPES)}), "
                                      f"got {show(spec)}")
            kind = spec.get("type")
            if kind not in SPACE_TYPES:
                raise self.err(where + ("type",), ("required" if kind is None else f"unknown type {show(kind)}")
                               + f"; one of: {', '.join(SPACE_TYPES)}")
            self.mapping(spec, where, SPACE_PARAM_KEYS[kind])
            rule = setting_rule(target, name) if target else None
            param = SpaceParam(name=name, type=kind, target=target)
            earlier = params
            if kind == "choice":
                param.values = self.choice_values(spec.get("values"), where + ("values",), rule, name, op_sets)
            elif kind == "derived":
                expr = spec.get("expr")
                if not isinstance(expr, str) or not expr.strip():
                    raise self.err(where + ("expr",), f"must be an arithmetic expression over earlier "
                                                      f"parameters, got {show(expr)}")
                try:
                    used = expr_names(expr)
                except ConfigError as e:
                    raise self.err(where + ("expr",), _one_line(e)) from None
                for used_name in used:
                    self.reference(used_name, earlier, where + ("expr",))
                referenced.update(used)
                if rule is not None and rule.kind not in ("int", "float"):
                    raise self.err(where + ("type",), f"{target}.{name} is not numeric; derived parameters can "
                                                      f"only set numeric settings")
                param.expr = expr
            else:
                self.range_param(param, spec, where, rule, target)
            param.when = self.when(spec.get("when"), where + ("when",), earlier)
            referenced.update(param.when)
            params[name] = param
        for name, param in params.items():
            if param.target is None and name not in referenced:
                hint = difflib.get_close_matches(name, SEARCH_SPACE_KEYS + DATA_SPACE_KEYS, n=1)
                raise self.err(p + (name,), "unknown setting: not a search or data key, and no derived "
                                            "expression or when condition reads it"
                               + (f" (did you mean {hint[0]!r}?)" if hint else "")
                               + f"; settings: {', '.join(SEARCH_SPACE_KEYS + DATA_SPACE_KEYS)}")
        return params

    def reference(self, name: str, earlier: Dict[str, SpaceParam], path: Tuple) -> None:
        if name not in earlier:
            known = ", ".join(earlier) or "(none: no earlier parameters)"
            raise self.err(path, f"unknown name {name!r}; known: {known}")
        if earlier[name].when and earlier[name].target is None:
            raise self.err(path, f"{name!r} is conditional (when) and has no default when skipped; "
                                 f"only unconditional parameters or search/data settings can be read")

    def choice_values(self, values: Any, path: Tuple, rule: Optional[Rule], name: str, op_sets: dict) -> list:
        if not isinstance(values, list) or not values:
            raise self.err(path, f"must be a non-empty list, got {show(values)}")
        if len(values) > MAX_CHOICE_VALUES:
            raise self.err(path, f"{len(values):,} values; at most {MAX_CHOICE_VALUES:,} (a space this large "
                                 f"cannot be enumerated or usefully searched; use type int, uniform or "
                                 f"loguniform for a range)")
        out = []
        seen = set()   # hashable scalars; set membership is == (1 == 1.0 == True), like the rule below
        for i, v in enumerate(values):
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise self.err(path + (i,), f"must be null, a boolean, a number or a string, got {show(v)}")
            if isinstance(v, float) and not math.isfinite(v):
                raise self.err(path + (i,), f"must be a finite number, got {show(v)}")
            if is_int(v) and abs(v) > INT64_MAX:
                raise self.err(path + (i,), f"must fit in 64 bits, got {show(v)}")
            if rule is not None:
                self.check(rule, v, path + (i,))
                if name == "op_set":
                    self.op_set_ref(v, op_sets, path + (i,))
            if v in seen:
                raise self.err(path + (i,), f"duplicate value {show(v)} (equal to an earlier one)")
            seen.add(v)
            out.append(v)
        return out

    def range_param(self, param: SpaceParam, spec: dict, where: Tuple, rule: Optional[Rule],
                    target: Optional[str]) -> None:
        kind = param.type
        if rule is not None:
            wanted = "int" if kind == "int" else "float"
            if rule.kind != wanted:
                uses = {"int": "int, choice or derived", "float": "uniform, loguniform, choice or derived",
                        "bool": "choice", "str": "choice"}[rule.kind]
                raise self.err(where + ("type",), f"{target}.{param.name} is {rule.describe()}; use type {uses}")
        number = INT() if kind == "int" else FLOAT()
        bounds = {}
        for key in ("low", "high"):
            if key not in spec:
                raise self.err(where + (key,), f"required for type {kind}")
            value = self.check(number, spec[key], where + (key,))
            if rule is not None:
                bound_rule = Rule(rule.kind, rule.low, rule.high, rule.low_open, rule.high_open)
                self.check(bound_rule, value, where + (key,))
            bounds[key] = value
        low, high = bounds["low"], bounds["high"]
        if not low < high:
            raise self.err(where + ("high",), f"must be > low ({_num(low)}), got {_num(high)}")
        if kind == "loguniform" and low <= 0:
            raise self.err(where + ("low",), f"must be > 0 for type loguniform, got {_num(low)}")
        if kind == "int":
            if abs(low) > 2 ** 62 or abs(high) > 2 ** 62:
                raise self.err(where + ("high",), "bounds must fit in 63 bits")
            param.log = self.check(BOOL, spec.get("log", False), where + ("log",))
            param.step = self.check(INT(1), spec.get("step", 1), where + ("step",))
            if param.log and param.step != 1:
                raise self.err(where + ("step",), f"must be 1 when log is true, got {param.step}")
            if param.log and low < 1:
                raise self.err(where + ("low",), f"must be >= 1 when log is true, got {low}")
            if (high - low) % param.step:
                raise self.err(where + ("high",), f"high - low ({high - low}) must be a multiple of step "
                                                  f"({param.step})")
        param.low, param.high = low, high

    def when(self, raw: Any, path: Tuple, earlier: Dict[str, SpaceParam]) -> Dict[str, List[Any]]:
        if raw is None:
            return {}
        if not isinstance(raw, dict) or not raw:
            raise self.err(path, f"must be a mapping of earlier parameter -> value (or list of values), "
                                 f"got {show(raw)}")
        out = {}
        for name, wanted in raw.items():
            where = path + (name,)
            if not isinstance(name, str):
                raise self.err(where, "must name an earlier parameter")
            self.reference(name, earlier, where)
            values = wanted if isinstance(wanted, list) else [wanted]
            if not values:
                raise self.err(where, "must be a value or a non-empty list of values")
            ref = earlier[name]
            for v in values:
                if v is not None and not isinstance(v, (bool, int, float, str)):
                    raise self.err(where, f"values must be null, booleans, numbers or strings, got {show(v)}")
                if ref.type == "choice" and v not in ref.values:
                    raise self.err(where, f"{show(v)} is not one of {name}'s values "
                                          f"({', '.join(show(c) for c in ref.values)})")
                if ref.type == "int" and not (is_int(v) and ref.low <= v <= ref.high):
                    raise self.err(where, f"{show(v)} is outside {name}'s range [{ref.low}, {ref.high}]")
            out[name] = list(values)
        return out

    # the rest -----------------------------------------------------------------------------------
    def objective(self, raw: Any) -> ObjectiveSection:
        p = ("objective",)
        m = self.mapping(raw, p, ("metric", "mode"))
        metric, mode = m.get("metric", "valid_loss"), m.get("mode", "min")
        metric_rule, mode_rule = ONE_OF(*SEARCH_METRICS), ONE_OF("min", "max")
        if isinstance(metric, list):
            if not metric:
                raise self.err(p + ("metric",), "must be a metric name or a non-empty list of them")
            for i, x in enumerate(metric):
                self.check(metric_rule, x, p + ("metric", i))
            if len(set(metric)) != len(metric):
                raise self.err(p + ("metric",), f"metrics must be distinct, got {show(metric)}")
            if isinstance(mode, list):
                if len(mode) != len(metric):
                    raise self.err(p + ("mode",), f"must have one entry per metric ({len(metric)}), "
                                                  f"got {len(mode)}")
                for i, x in enumerate(mode):
                    self.check(mode_rule, x, p + ("mode", i))
                mode = list(mode)
            else:
                mode = [self.check(mode_rule, mode, p + ("mode",))] * len(metric)
            return ObjectiveSection(metric=list(metric), mode=mode)
        self.check(metric_rule, metric, p + ("metric",))
        if isinstance(mode, list):
            raise self.err(p + ("mode",), "must be min or max (a list only with a list of metrics)")
        return ObjectiveSection(metric=metric, mode=self.check(mode_rule, mode, p + ("mode",)))

    def proxy_objective(self, objective: "ObjectiveSection", search: SearchSection,
                        scheduler: "SchedulerSection") -> None:
        """A proxy metric exists only at a trial's end: it needs the proxy retrain, and ASHA (which
        compares trials at intermediate reports) cannot use it."""
        metrics = objective.metric if isinstance(objective.metric, list) else [objective.metric]
        proxy = [m for m in metrics if m in PROXY_METRICS]
        if not proxy:
            return
        if search.proxy_retrain is None:
            raise self.err(("objective", "metric"), f"{proxy[0]} needs search.proxy_retrain (a short "
                                                    f"equal-size retrain at the end of every search trial), "
                                                    f"e.g. proxy_retrain: {{steps: 200}}")
        if scheduler.type == "asha":
            raise self.err(("scheduler", "type"), f"asha stops trials on intermediate reports, but "
                                                  f"{proxy[0]} is reported only at a trial's end; use none")

    def scheduler(self, raw: Any) -> SchedulerSection:
        p = ("scheduler",)
        m = self.mapping(raw, p, tuple(SCHEDULER_RULES))
        defaults = {f.name: f.default for f in fields(SchedulerSection)}
        values = self.section(m, p, SCHEDULER_RULES, defaults)
        if values["type"] == "none":
            for key in m:
                if key != "type":
                    raise self.err(p + (key,), "only allowed with scheduler.type asha")
            return SchedulerSection()
        if values["max_t"] is not None and values["grace_period"] > values["max_t"]:
            raise self.err(p + ("grace_period",), f"must be <= scheduler.max_t ({values['max_t']}), "
                                                  f"got {values['grace_period']}")
        return SchedulerSection(**values)

    def retrain(self, raw: Any, num_samples: int, search: SearchSection,
                space: Dict[str, SpaceParam]) -> RetrainSection:
        p = ("retrain",)
        m = self.mapping(raw, p, tuple(RETRAIN_RULES) + RETRAIN_NESTED_KEYS)
        defaults = {f.name: f.default for f in fields(RetrainSection)}
        values = self.section(m, p, RETRAIN_RULES, defaults)
        values["seeds"] = self.seed_list(m.get("seeds"), p + ("seeds",))
        values["size"] = self.size(m.get("size"), p + ("size",))
        if values["top_k"] > num_samples:
            raise self.err(p + ("top_k",), f"must be <= num_samples ({num_samples}), got {values['top_k']}")
        if values["steps"] is None and values["budget_minutes"] is None:
            raise self.err(p + ("steps",), "retrain.steps and retrain.budget_minutes cannot both be null")
        hidden = values["hidden"]
        if hidden is not None:
            splits = {search.splits}
            sp = space.get("splits")
            if sp is not None and sp.type == "choice":
                splits.update(v for v in sp.values if is_int(v))
            elif sp is not None and sp.type == "int" and (sp.high - sp.low) // sp.step < 4096:
                splits.update(range(sp.low, sp.high + 1, sp.step))
            for n in sorted(splits):
                if hidden % n:
                    raise self.err(p + ("hidden",), f"must be divisible by every possible split count "
                                                    f"(search.splits can be {n}), got {hidden}")
        return RetrainSection(**values)

    def size(self, raw: Any, path: Tuple) -> Dict[str, Any]:
        m = self.mapping(raw, path, tuple(SIZE_RULES))
        values = self.section(m, path, SIZE_RULES, SIZE_DEFAULTS)
        if values["match"] == "width" and values["params"] is not None:
            raise self.err(path + ("params",), "only used with retrain.size.match: params (match is width)")
        return values

    def seed_list(self, raw: Any, path: Tuple) -> Optional[List[int]]:
        if raw is None:
            return None
        if not isinstance(raw, list) or not raw or len(raw) > MAX_SEEDS:
            raise self.err(path, f"must be null (the sweep's seed) or a list of 1 to {MAX_SEEDS} distinct "
                                 f"seeds, got {show(raw)}")
        seeds = [self.check(INT(0, 2**31 - 1), x, path + (i,)) for i, x in enumerate(raw)]
        if len(set(seeds)) != len(seeds):
            raise self.err(path, f"seeds must be distinct, got {show(raw)}")
        return seeds

    def tracking(self, raw: Any) -> TrackingSection:
        p = ("tracking",)
        m = self.mapping(raw, p, ("uri", "experiment", "registered_model"))
        uri = m.get("uri")
        if uri is not None:
            if not isinstance(uri, str) or not (URI_SCHEME_RE.match(uri) or uri == "databricks"):
                raise self.err(p + ("uri",), f"must be null (sqlite database under storage) or an MLflow "
                                             f"tracking URI such as sqlite:////abs/mlflow.db or "
                                             f"http://host:5000, got {show(uri)}")
            if uri.startswith("file:"):
                raise self.err(p + ("uri",), "MLflow 3.17 refuses file stores; use sqlite:////abs/mlflow.db "
                                             "or a tracking server")
            if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
                rel = uri[len("sqlite:///"):]
                uri = "sqlite:///" + os.path.normpath(os.path.join(self.base_dir, rel))
        experiment = self.check(Rule("str", pattern=re.compile(r"^\S.{0,199}$"), nullable=True,
                                     what="a non-empty experiment name"), m.get("experiment"), p + ("experiment",))
        model = self.check(Rule("str", pattern=MODEL_NAME_RE, nullable=True,
                                what="a model name of letters, digits, space, _, . and -"),
                           m.get("registered_model"), p + ("registered_model",))
        return TrackingSection(uri=uri, experiment=experiment, registered_model=model)
