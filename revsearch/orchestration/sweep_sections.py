"""The sections of a sweep file as pydantic models: types, bounds, defaults and the rules within a section.

Defaults of settings that the library's dataclasses already define (``SupernetConfig``,
``SearchConfig``, ``SyntheticConfig``) are read from them, never repeated. ``description`` is the
*meaning* column of docs/sweep-reference.md and ``json_schema_extra`` holds what the type alone cannot
say (``allowed`` replaces the generated text, ``rules`` is appended to it in the reference).
Rules that need other sections (op set names, ``num_samples``, ``space``) live in ``sweep_model``.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import MISSING, fields
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from typing_extensions import Annotated

from ..data.synthetic import SyntheticConfig
from .sweep_errors import INT64_MAX, problem, quoted_value
from .sweep_fields import DirectoryPath, Int, Number, OptInt, Probability, doc, plain

DATA_KINDS = ("synthetic", "corpus", "wmt14")
WMT14_PAIRS = ("en-de", "en-fr", "en-cs")
SYNTHETIC_LANGS = ("en", "de")
FULL_OP_SET = "full"
#: what the search trainable reports at every report (a sweep's objective must be among these)
SEARCH_METRICS = ("valid_loss", "train_loss", "arch_loss", "alpha_entropy", "param_free_share", "alpha_margin",
                  "alpha_margin_min", "params", "steps_per_s",
                  "search_seconds", "trial_wall_seconds", "peak_rss_bytes", "cuda_max_allocated_bytes",
                  "proxy_valid_bleu", "proxy_valid_loss")
#: reported once, at a search trial's end, by its short equal-size retrain (search.proxy_retrain)
PROXY_METRICS = ("proxy_valid_bleu", "proxy_valid_loss")
SCHEDULER_TYPES = ("none", "asha")
LANG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,15}$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,199}$")
URI_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"
#: more random genotypes than this is a different experiment (a random search), not a baseline
MAX_RANDOM_GENOTYPES = 64
MAX_SEEDS = 32


def library_default(dataclass_type: type, name: str) -> Any:
    """The default of a field of one of the library's config dataclasses (the single source)."""
    for f in fields(dataclass_type):
        if f.name == name:
            return f.default if f.default is not MISSING else f.default_factory()
    raise KeyError(f"{dataclass_type.__name__} has no field {name!r}")


def as_dict(model: BaseModel) -> Dict[str, Any]:
    """Nested mappings are kept as plain dicts (they travel in Ray configs and JSON as such)."""
    return model.model_dump()


class Section(BaseModel):
    """A mapping of the sweep file: unknown keys are errors, and a missing or null section is all defaults."""
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_means_defaults(cls, data: Any) -> Any:
        return {} if data is None else data

    def to_dict(self) -> dict:
        return {name: plain(getattr(self, name)) for name in type(self).model_fields}


# --- data -----------------------------------------------------------------------------------------
class SyntheticSection(Section):
    train: Int(2) = Field(library_default(SyntheticConfig, "train"), description="training pairs")
    valid: Int(1) = Field(library_default(SyntheticConfig, "valid"), description="validation pairs")
    test: Int(1) = Field(library_default(SyntheticConfig, "test"), description="test pairs")
    seed: Int(0) = Field(library_default(SyntheticConfig, "seed"), description="generator seed")
    min_words: Int(3) = Field(library_default(SyntheticConfig, "min_words"), description="shortest sentence")
    max_words: Int(3) = Field(library_default(SyntheticConfig, "max_words"), description="longest sentence",
                              **doc(rules="≥ `min_words`"))
    p_adjective: Probability = Field(library_default(SyntheticConfig, "p_adjective"), description="grammar probability")
    p_np_pp: Probability = Field(library_default(SyntheticConfig, "p_np_pp"), description="grammar probability")
    p_relative: Probability = Field(library_default(SyntheticConfig, "p_relative"), description="grammar probability")
    p_plural: Probability = Field(library_default(SyntheticConfig, "p_plural"), description="grammar probability")
    p_pronoun: Probability = Field(library_default(SyntheticConfig, "p_pronoun"), description="grammar probability")
    p_past: Probability = Field(library_default(SyntheticConfig, "p_past"), description="grammar probability")
    p_negation: Probability = Field(library_default(SyntheticConfig, "p_negation"), description="grammar probability")
    p_place: Probability = Field(library_default(SyntheticConfig, "p_place"), description="grammar probability")
    p_intransitive: Probability = Field(library_default(SyntheticConfig, "p_intransitive"),
                                        description="grammar probability")

    @model_validator(mode="after")
    def _lengths(self):
        if self.max_words < self.min_words:
            raise problem(("max_words",), f"must be >= data.synthetic.min_words ({self.min_words}), "
                                          f"got {self.max_words}")
        return self


assert set(SyntheticSection.model_fields) == {f.name for f in fields(SyntheticConfig)}, \
    "SyntheticConfig gained a field: add it to SyntheticSection"

Lang = Optional[Annotated[str, Field(strict=True, pattern=LANG_RE.pattern)]]


def data_problem(values: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    """Cross-key rule of the data settings a trial may override: (key, message) when broken."""
    if values["max_tokens"] < values["max_len"]:
        return "max_tokens", (f"must be >= data.max_len ({values['max_len']}) so the longest pair fits "
                              f"a batch, got {values['max_tokens']}")
    return None


class DataSection(Section):
    kind: Literal[DATA_KINDS] = Field("synthetic", description="where the parallel corpus comes from")
    synthetic: Optional[Annotated[SyntheticSection, AfterValidator(as_dict)]] = Field(
        None, description="the embedded synthetic en→de pair, generated under `storage/data` "
                          "(null: `SyntheticConfig` defaults)", **doc(rules="only with `kind: synthetic`"))
    path: Optional[DirectoryPath] = Field(
        None, description="directory with `{train,valid,test}.{src_lang,tgt_lang}` (as written by "
                          "`revsearch data import`)",
        **doc(type="path", allowed="a directory path", rules="required with (and only with) `kind: corpus`"))
    src_lang: Lang = Field(None, description="source file suffix (synthetic: `en`; wmt14: from `pair`; corpus "
                                             "null: read `meta.json`)",
                           **doc(allowed="null or a language code such as en", rules="must match the fixed "
                                 "ones for synthetic/wmt14"))
    tgt_lang: Lang = Field(None, description="target file suffix (synthetic: `de`; wmt14: from `pair`)",
                           **doc(allowed="null or a language code such as en", rules="≠ `src_lang`"))
    pair: Optional[Literal[WMT14_PAIRS]] = Field(
        None, description="WMT'14 pair, prepared under `storage/data/wmt14-<pair>` (`revsearch data wmt14`; "
                          "null: `en-de`)",
        **doc(type="string", allowed="one of: " + ", ".join(WMT14_PAIRS), rules="only with `kind: wmt14`"))
    vocab_size: Int(8) = Field(1000, description="joint SentencePiece vocabulary (a small corpus may give fewer "
                                                 "pieces)")
    spm_model_type: Literal["unigram", "bpe"] = Field("unigram", description="SentencePiece model")
    max_tokens: Int(1) = Field(2048, description="padded tokens per search batch", **doc(rules="≥ `max_len`"))
    arch_fraction: Number(gt=0.0, lt=1.0) = Field(
        0.5, description="share of the training pairs used for the α (architecture) step; the rest trains θ")
    max_len: Int(4) = Field(128, description="pairs with a side longer than this many token ids (bos/eos "
                                             "included) are dropped; also the supernet's position table")

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: Optional[str], info: ValidationInfo) -> Optional[str]:
        return None if value is None else resolve_directory(value, info)

    @model_validator(mode="after")
    def _kind_rules(self):
        found = data_problem(self.__dict__)
        if found:
            raise problem((found[0],), found[1])
        for key, wanted in (("synthetic", "synthetic"), ("path", "corpus"), ("pair", "wmt14")):
            if getattr(self, key) is not None and self.kind != wanted:
                raise problem((key,), f"only allowed with data.kind {wanted} (data.kind is {self.kind})")
        fixed = None
        if self.kind == "synthetic":
            if self.synthetic is None:
                self.synthetic = SyntheticSection().model_dump()
            fixed = SYNTHETIC_LANGS
        elif self.kind == "wmt14":
            self.pair = self.pair or "en-de"
            fixed = tuple(self.pair.split("-"))
        elif self.path is None:
            raise problem(("path",), "required with data.kind corpus: a directory holding "
                                     "{train,valid,test}.{src_lang,tgt_lang}")
        if fixed is not None:
            for key, want in (("src_lang", fixed[0]), ("tgt_lang", fixed[1])):
                given = getattr(self, key)
                if given is not None and given != want:
                    raise problem((key,), f"must be {want!r} for data.kind {self.kind}"
                                          + (f" {self.pair}" if self.pair else "") + f", got {quoted_value(given)}")
            self.src_lang, self.tgt_lang = fixed
        elif self.src_lang is not None and self.src_lang == self.tgt_lang:
            raise problem(("tgt_lang",), f"must differ from data.src_lang, got {quoted_value(self.tgt_lang)}")
        return self

    def synthetic_config(self) -> SyntheticConfig:
        return SyntheticConfig(**(self.synthetic or {}))


def resolve_directory(value: str, info: ValidationInfo) -> str:
    """A local directory path, absolute: relative ones resolve against the sweep file's directory."""
    if not value.strip() or "\0" in value:
        raise problem((), f"must be a directory path, got {quoted_value(value)}")
    if URI_SCHEME_RE.match(value) and not re.match(r"^[A-Za-z]:[\\/]", value):
        raise problem((), f"must be a local (or shared-filesystem) directory path, got {quoted_value(value)}")
    base_dir = (info.context or {}).get("base_dir") or os.getcwd()
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


# --- objective, scheduler, resources, tracking ----------------------------------------------------
def normalize_objective(data: dict) -> dict:
    """One metric and mode, or a list of distinct metrics with one mode each (a single mode repeats)."""
    data = dict(data)
    metric, mode = data.get("metric", "valid_loss"), data.get("mode", "min")

    def one_of(value: Any, choices: Tuple[str, ...], path: tuple) -> str:
        if not isinstance(value, str) or value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
            raise problem(path, f"must be one of: {', '.join(choices)}, got {quoted_value(value)}"
                                + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        return value

    if isinstance(metric, list):
        if not metric:
            raise problem(("metric",), "must be a metric name or a non-empty list of them")
        for i, x in enumerate(metric):
            one_of(x, SEARCH_METRICS, ("metric", i))
        if len(set(metric)) != len(metric):
            raise problem(("metric",), f"metrics must be distinct, got {quoted_value(metric)}")
        if isinstance(mode, list):
            if len(mode) != len(metric):
                raise problem(("mode",), f"must have one entry per metric ({len(metric)}), got {len(mode)}")
            mode = [one_of(x, ("min", "max"), ("mode", i)) for i, x in enumerate(mode)]
        else:
            mode = [one_of(mode, ("min", "max"), ("mode",))] * len(metric)
        data["metric"], data["mode"] = list(metric), mode
        return data
    one_of(metric, SEARCH_METRICS, ("metric",))
    if isinstance(mode, list):
        raise problem(("mode",), "must be min or max (a list only with a list of metrics)")
    data["metric"], data["mode"] = metric, one_of(mode, ("min", "max"), ("mode",))
    return data


class ObjectiveSection(Section):
    metric: Any = Field("valid_loss", description="reported metric(s) Optuna optimises; the last report of a "
                                                  "trial counts",
                        **doc(type="string or list", allowed="one of: " + ", ".join(SEARCH_METRICS),
                              rules="`proxy_*` need `search.proxy_retrain`; a list (distinct) for "
                                    "multi-objective"))
    mode: Any = Field("min", description="direction of each metric",
                      **doc(type="string or list", allowed="one of: min, max",
                            rules="a list of the same length as `metric`, or one string for all"))

    @model_validator(mode="before")
    @classmethod
    def _metrics_and_modes(cls, data: Any) -> Any:
        return normalize_objective(data) if isinstance(data, dict) else data

    @property
    def metrics(self) -> List[str]:
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> List[str]:
        return list(self.mode) if isinstance(self.mode, list) else [self.mode]

    @property
    def multi(self) -> bool:
        return isinstance(self.metric, list)


class SchedulerSection(Section):
    type: Literal[SCHEDULER_TYPES] = Field("none", description="`asha`: asynchronous successive halving on "
                                                               "the first objective metric")
    grace_period: Int(1) = Field(1, description="reports before a trial can be stopped (asha only)",
                                 **doc(rules="≤ `max_t`"))
    reduction_factor: Number(gt=1.0) = Field(4.0, description="(asha only)")
    max_t: OptInt(1) = Field(None, description="reports of the longest trial (asha only; null: "
                                               "`ceil(steps / report_every)`)")

    @model_validator(mode="after")
    def _asha_only(self):
        if self.type == "none":
            for key in self.model_fields_set - {"type"}:
                raise problem((key,), "only allowed with scheduler.type asha")
            return self
        if self.max_t is not None and self.grace_period > self.max_t:
            raise problem(("grace_period",), f"must be <= scheduler.max_t ({self.max_t}), got {self.grace_period}")
        return self


class ResourcesSection(Section):
    cpu: Number(gt=0.0) = Field(1.0, description="CPUs per trial (also the trial's torch threads)")
    gpu: Number(ge=0.0) = Field(0.0, description="GPUs per trial (fractions share a GPU)")
    workers: Int(1) = Field(1, description="data-parallel worker processes per trial, each with `cpu` CPUs "
                                           "and `gpu` GPUs (>1: a Ray Train run inside the trial; the "
                                           "batch size `max_tokens` is split over them)")


def resolve_tracking_uri(uri: Any, base_dir: str) -> Optional[str]:
    """A tracking URI as written in a sweep (or ``--tracking-uri``): a relative ``sqlite:///`` path
    resolves against ``base_dir``. Raises ``ValueError`` (one line) when it is not a usable URI."""
    if uri is None:
        return None
    if not isinstance(uri, str) or not (URI_SCHEME_RE.match(uri) or uri == "databricks"):
        raise ValueError(f"must be {TRACKING_URI_ALLOWED}, got {quoted_value(uri)}")
    if uri.startswith("file:"):
        raise ValueError("MLflow 3.17 refuses file stores; use sqlite:////abs/mlflow.db or a tracking server")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
        uri = "sqlite:///" + os.path.normpath(os.path.join(base_dir, uri[len("sqlite:///"):]))
    return uri


TRACKING_URI_ALLOWED = ("null (sqlite database under storage) or an MLflow tracking URI such as "
                        "sqlite:////abs/mlflow.db or http://host:5000")


class TrackingSection(Section):
    """As written (None = default); ``SweepConfig.tracking_uri`` etc. give the resolved values, computed
    from the current ``storage`` / ``name`` (so a ``--storage`` override moves the default database)."""
    uri: Any = Field(None, description="where runs go (null: `sqlite:////<abs storage>/mlflow.db`); "
                                       "`mlflow ui --backend-store-uri <uri>` shows them",
                     **doc(type="string or null", allowed=TRACKING_URI_ALLOWED,
                           rules="a relative `sqlite:///x.db` resolves against the YAML directory; not `file:`"))
    experiment: Optional[Annotated[str, Field(strict=True, pattern=r"^\S.{0,199}$")]] = Field(
        None, description="MLflow experiment (null: `name`)",
        **doc(allowed="null or a non-empty experiment name"))
    registered_model: Optional[Annotated[str, Field(strict=True, pattern=MODEL_NAME_RE.pattern)]] = Field(
        None, description="registry name of the best model (null: `revsearch-<name>`)",
        **doc(allowed="null or a model name of letters, digits, space, _, . and -"))

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: Any, info: ValidationInfo) -> Optional[str]:
        try:
            return resolve_tracking_uri(value, (info.context or {}).get("base_dir") or os.getcwd())
        except ValueError as e:
            raise problem((), str(e)) from None


__all__ = ["Section", "DataSection", "SyntheticSection", "ObjectiveSection", "SchedulerSection",
           "ResourcesSection", "TrackingSection", "data_problem", "library_default", "INT64_MAX"]
