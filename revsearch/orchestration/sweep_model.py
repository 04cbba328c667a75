"""``SweepConfig``: the whole sweep file as one pydantic model, with the rules that join its sections.

Fields are validated in declaration order (the file's documented order), so a field validator sees the
sections before it in ``info.data``: ``search.op_set`` is checked against ``op_sets``, ``space``
against ``search``/``data``/``op_sets``; rules needing the sections after it run in the model's
after-validator. Relative paths resolve against ``base_dir`` in the validation context.
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Dict, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from typing_extensions import Annotated

from ..errors import ConfigError
from ..ops.registry import DECODER_OPS, ENCODER_OPS, validate_op_names
from .sweep_errors import is_int, one_line, problem, quoted_value
from .sweep_fields import Int, doc, plain
from .sweep_retrain import RetrainSection
from .sweep_search import SearchSection
from .sweep_sections import (FULL_OP_SET, NAME_PATTERN, PROXY_METRICS, DataSection, ObjectiveSection,
                             ResourcesSection, SchedulerSection, TrackingSection, resolve_directory)
from .sweep_space_schema import SpaceParam, build_space

#: search trials of one sweep (each trains a supernet; Tune keeps every trial's state in memory)
MAX_NUM_SAMPLES = 10_000
NAME_ALLOWED = "a name of letters, digits, - and _ (at most 100, starting with a letter or digit)"


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(strict=True, pattern=NAME_PATTERN)] = Field(
        description="experiment name (MLflow experiment, run directories, registered model)",
        **{"json_schema_extra": {"allowed": NAME_ALLOWED,
                                 "required": "the experiment name (letters, digits, -, _)"}})
    seed: Int(0, 2 ** 32 - 1) = Field(0, description="seeds Optuna's TPE sampler, data splits and model "
                                                     "initialisation")
    storage: Optional[Annotated[str, Field(strict=True)]] = Field(
        None, validate_default=True,
        description="results root: Tune results, checkpoints, prepared data, SentencePiece cache, default "
                    "MLflow database (null: `runs/<name>`)",
        **doc(type="path", allowed="a directory path", rules="local or shared-filesystem directory (no URI)"))
    data: DataSection = Field(default_factory=DataSection, description="the corpus")
    op_sets: Dict[str, Dict[str, Tuple[str, ...]]] = Field(
        default_factory=dict, description="named candidate op sets; `full` always exists",
        **doc(allowed="name → `{encoder, decoder}`"))
    search: SearchSection = Field(default_factory=SearchSection, description="fixed settings of every search trial")
    space: Dict[str, SpaceParam] = Field(default_factory=dict, validate_default=True,
                                         description="the outer search space sampled by Optuna",
                                         **doc(allowed="name → parameter"))
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection,
                                        description="what Optuna optimises and how the retrain candidates are ranked")
    num_samples: Int(1, MAX_NUM_SAMPLES) = Field(4, description="number of search trials")
    max_concurrent: Int(1) = Field(2, description="search (and retrain) trials running at once")
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection, description="early stopping of search "
                                                                                      "trials")
    resources: ResourcesSection = Field(default_factory=ResourcesSection, description="per trial")
    retrain: RetrainSection = Field(default_factory=RetrainSection, description="stage 2")
    tracking: TrackingSection = Field(default_factory=TrackingSection, description="MLflow")
    source: str = Field("<sweep>", exclude=True, description="the file (or label) errors name")

    # --- rules joining sections -------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _top_level_mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise problem((), f"the top level must be a mapping of sections "
                              f"({', '.join(k for k in cls.model_fields if k != 'source')}), "
                              f"got {type(data).__name__}")
        if "source" in data:
            raise problem(("source",), "unknown key; allowed: " + ", ".join(k for k in cls.model_fields
                                                                            if k != "source"))
        return data

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: Optional[str], info: ValidationInfo) -> str:
        if value is None:
            if "name" not in info.data:
                return ""
            value = os.path.join("runs", info.data["name"])
        return resolve_directory(value, info)

    @field_validator("op_sets", mode="before")
    @classmethod
    def _op_sets(cls, raw: Any) -> Dict[str, Dict[str, Tuple[str, ...]]]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise problem((), f"must be a mapping of op set name -> {{encoder: [...], decoder: [...]}}, "
                              f"got {quoted_value(raw)}")
        out = {}
        for name, entry in raw.items():
            if name == FULL_OP_SET:
                raise problem((name,), "'full' is built in (every op) and cannot be redefined")
            if not isinstance(name, str) or not _is_name(name):
                raise problem((name,), "op set names must be letters, digits, - and _")
            if not isinstance(entry, dict):
                raise problem((name,), f"must be a mapping with keys encoder, decoder, got {quoted_value(entry)}")
            for key in entry:
                if key not in ("encoder", "decoder"):
                    hint = difflib.get_close_matches(key, ("encoder", "decoder"), n=1) if isinstance(key, str) else []
                    raise problem((name, key), "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                  + "; allowed: encoder, decoder")
            sets = {}
            for side, full in (("encoder", ENCODER_OPS), ("decoder", DECODER_OPS)):
                ops = entry.get(side, list(full))
                if not isinstance(ops, list):
                    raise problem((name, side), f"must be a list of op names, got {quoted_value(ops)}")
                for i, op in enumerate(ops):
                    if not isinstance(op, str):
                        raise problem((name, side, i), f"must be an op name ({', '.join(full)}), got {quoted_value(op)}")
                try:
                    sets[side] = validate_op_names(ops, decoder=side == "decoder")
                except ConfigError as e:
                    raise problem((name, side), one_line(e)) from None
            out[name] = sets
        return out

    @field_validator("search")
    @classmethod
    def _op_set_defined(cls, search: SearchSection, info: ValidationInfo) -> SearchSection:
        known = (FULL_OP_SET,) + tuple(info.data.get("op_sets", {}))
        if search.op_set not in known:
            raise problem(("op_set",), f"unknown op set {quoted_value(search.op_set)}; defined: {', '.join(known)}")
        return search

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, raw: Any, info: ValidationInfo) -> Dict[str, SpaceParam]:
        if not {"search", "data", "op_sets"} <= set(info.data):
            return {}   # an earlier section is invalid and reported; the space cannot be checked
        return build_space(raw, info.data["op_sets"])

    @model_validator(mode="after")
    def _across_sections(self):
        proxy = [m for m in self.objective.metrics if m in PROXY_METRICS]
        if proxy and self.search.proxy_retrain is None:
            raise problem(("objective", "metric"), f"{proxy[0]} needs search.proxy_retrain (a short equal-size "
                                                   f"retrain at the end of every search trial), e.g. "
                                                   f"proxy_retrain: {{steps: 200}}")
        if proxy and self.scheduler.type == "asha":
            raise problem(("scheduler", "type"), f"asha stops trials on intermediate reports, but {proxy[0]} is "
                                                 f"reported only at a trial's end; use none")
        if self.retrain.top_k > self.num_samples:
            raise problem(("retrain", "top_k"), f"must be <= num_samples ({self.num_samples}), "
                                                f"got {self.retrain.top_k}")
        hidden = self.retrain.hidden
        if hidden is not None:
            splits = {self.search.splits}
            sp = self.space.get("splits")
            if sp is not None and sp.type == "choice":
                splits.update(v for v in sp.values if is_int(v))
            elif sp is not None and sp.type == "int" and (sp.high - sp.low) // sp.step < 4096:
                splits.update(range(sp.low, sp.high + 1, sp.step))
            for n in sorted(splits):
                if n and hidden % n:
                    raise problem(("retrain", "hidden"), f"must be divisible by every possible split count "
                                                         f"(search.splits can be {n}), got {hidden}")
        return self

    def __eq__(self, other: Any) -> bool:   # the source label is not part of the configuration
        if not isinstance(other, SweepConfig):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in type(self).model_fields if k != "source")

    __hash__ = None

    # --- convenience ------------------------------------------------------------------------------
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
        scheduler = self.scheduler.to_dict() if self.scheduler.type != "none" else {"type": "none"}
        return {
            "name": self.name, "seed": self.seed, "storage": self.storage,
            "data": self.data.to_dict(), "search": self.search.to_dict(),
            "op_sets": {k: {"encoder": list(v["encoder"]), "decoder": list(v["decoder"])}
                        for k, v in self.op_sets.items()},
            "space": {k: p.to_dict() for k, p in self.space.items()},
            "objective": {"metric": plain(self.objective.metric), "mode": plain(self.objective.mode)},
            "num_samples": self.num_samples, "max_concurrent": self.max_concurrent,
            "scheduler": scheduler, "resources": self.resources.to_dict(),
            "retrain": self.retrain.to_dict(),
            "tracking": {"uri": self.tracking_uri, "experiment": self.experiment_name,
                         "registered_model": self.registered_model_name},
        }


def _is_name(text: str) -> bool:
    return re.match(NAME_PATTERN, text) is not None


TOP_KEYS = tuple(k for k in SweepConfig.model_fields if k != "source")
