"""The ``search`` section: fixed settings of every search trial (a ``space`` parameter may override them).

Model and optimiser defaults are the library's (``SupernetConfig``, ``SearchConfig``), read from the
dataclasses. ``search_problem`` holds the cross-key rules; ``resolve_trial`` applies it again to each
trial's merged settings.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, Optional, Tuple

from pydantic import AfterValidator, Field, model_validator
from typing_extensions import Annotated

from ..search.bilevel import SearchConfig
from ..search.supernet import SupernetConfig
from .sweep_errors import problem
from .sweep_fields import Fraction, Int, Number, OptInt, OptNumber, doc
from .sweep_sections import NAME_PATTERN, Section, as_dict, library_default


def supernet(name: str) -> Any:
    return library_default(SupernetConfig, name)


def optimizer(name: str) -> Any:
    return library_default(SearchConfig, name)


class ProxyRetrainSection(Section):
    steps: Int(1) = Field(200, description="training steps of the proxy retrain")
    max_tokens: OptInt(1) = Field(None, description="tokens per batch (null: `retrain.max_tokens`)")
    lr: OptNumber(gt=0.0) = Field(None, description="peak learning rate (null: `retrain.lr`; warm-up: "
                                                    "`retrain.warmup_steps`, at most a quarter of `steps`)")
    valid_sentences: Int(1) = Field(200, description="first validation pairs decoded for `proxy_valid_bleu`")
    beam: Int(1) = Field(1, description="beam size of that decoding (1: greedy)")


PROXY_DEFAULTS = ProxyRetrainSection().model_dump()
BETAS = Tuple[Fraction, Fraction]


def search_problem(values: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    """Cross-key rules of the search settings: (key, message) of the first broken one."""
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


class SearchSection(Section):
    steps: Int(1) = Field(300, description="search steps; each is one α step and one θ step")
    report_every: Int(1) = Field(50, description="Tune report + MLflow metrics + validation every this many "
                                                 "steps (one report = one `training_iteration`, the unit of ASHA)",
                                 **doc(rules="≤ `steps`"))
    checkpoint_every: Int(1) = Field(100, description="Tune checkpoint (trial restart on failure, experiment "
                                                      "resume)", **doc(rules="a multiple of `report_every`"))
    valid_batches: Int(1) = Field(4, description="validation batches per report")
    hidden: Int(1) = Field(supernet("hidden"), description="encoder width d; each split has d / `splits`",
                           **doc(rules="divisible by `splits`"))
    splits: Int(2) = Field(supernet("splits"), description="encoder splits n (the decoder has n + 1; the last "
                                                           "is fixed cross-attention)")
    embed_dim: Int(1) = Field(supernet("embed_dim"), description="factorised embedding width e")
    encoder_layers: Int(1) = Field(supernet("encoder_layers"), description="supernet encoder depth")
    decoder_layers: Int(1) = Field(supernet("decoder_layers"), description="supernet decoder depth")
    cell_layers: OptInt(1) = Field(supernet("cell_layers"), description="layers s carrying their own α; deeper "
                                   "layers reuse them cyclically with `share_alpha` (null: every layer searched "
                                   "separately)")
    share_alpha: bool = Field(supernet("share_alpha"), strict=True,
                              description="reuse the cell's α in deeper layers")
    heads: Int(1) = Field(supernet("heads"), description="attention / dynamic-conv heads (largest divisor of the "
                                                         "split width ≤ heads)")
    dropout: Fraction = Field(supernet("dropout"), description="dropout of the supernet")
    pooling: Literal["max", "mean"] = Field(supernet("pooling"), description="how a node merges the other splits")
    mode: Literal["reversible", "plain", "checkpoint"] = Field(
        supernet("mode"), description="backward pass of the supernet (plain = ordinary DARTS, for comparison)")
    tie_embeddings: bool = Field(supernet("tie_embeddings"), strict=True,
                                 description="tie input and output embeddings")
    op_set: Annotated[str, Field(strict=True, pattern=NAME_PATTERN)] = Field(
        "full", description="candidate operations", **doc(allowed="an op set name",
                                                          rules="`full` or a name in `op_sets`"))
    lr: Number(gt=0.0) = Field(optimizer("lr"), description="θ: Adam peak learning rate, inverse-sqrt schedule")
    warmup_steps: Int(0) = Field(optimizer("warmup_steps"), description="θ warm-up")
    betas: BETAS = Field(optimizer("betas"), description="Adam betas of θ (and of α unless `alpha_betas` is set)",
                         **doc(type="[number, number]", allowed="a list of two numbers in [0, 1)"))
    alpha_lr: Number(gt=0.0) = Field(optimizer("alpha_lr"), description="α: Adam learning rate (fixed)")
    alpha_weight_decay: Number(ge=0.0) = Field(optimizer("alpha_weight_decay"), description="α weight decay")
    alpha_betas: Optional[BETAS] = Field(
        optimizer("alpha_betas"), description="Adam betas of α (null: the same as `betas`)",
        **doc(type="[number, number] or null", allowed="null (the same as betas) or a list of two numbers "
                                                       "in [0, 1)"))
    alpha_warmup_steps: Int(0) = Field(optimizer("alpha_warmup_steps"),
                                       description="θ-only steps before α starts moving (DARTS practice against "
                                                   "early collapse; `arch_loss` is not computed, NaN when a whole "
                                                   "report window is warm-up)", **doc(rules="< `steps`"))
    label_smoothing: Fraction = Field(optimizer("label_smoothing"), description="label smoothing of the θ loss")
    clip_norm: Number(ge=0.0) = Field(optimizer("clip_norm"), description="θ gradient clipping (0: off)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        optimizer("precision"), description="autocast precision of the supernet's forward pass (fp32: none); "
                                            "split states and couplings stay in high precision, see "
                                            "docs/precision.md")
    second_order: bool = Field(optimizer("second_order"), strict=True,
                               description="DARTS unrolled (second-order) α gradient")
    finite_difference_scale: Number(gt=0.0) = Field(optimizer("finite_difference_scale"),
                                                    description="ε scale of the second-order finite difference")
    derive_allow_zero: bool = Field(
        optimizer("derive_allow_zero"), strict=True,
        description="deriving the genotype (argmax of softmax(α) per node): `false` never keeps `zero`, a node "
                    "whose largest weight is `zero` takes its next-best op, as DARTS excludes \"none\"; `true` "
                    "allows it. The genotype JSON records the rule under `derivation` (`\"excluded\": [\"zero\"]`)")
    proxy_retrain: Optional[Annotated[ProxyRetrainSection, AfterValidator(as_dict)]] = Field(
        None, description="a short equal-size retrain at the end of every search trial, for the `proxy_*` "
                          "objectives (null: off)", **doc(type="mapping or null", rules="see below"))

    @model_validator(mode="after")
    def _cross_key_rules(self):
        found = search_problem(self.__dict__)
        if found:
            raise problem((found[0],), found[1])
        return self


SEARCH_KEYS = tuple(SearchSection.model_fields)
#: Adam betas pairs: fixed per sweep (a pair cannot be a space parameter)
SEARCH_PAIR_KEYS = ("betas", "alpha_betas")
#: search settings that are mappings (never space parameters)
SEARCH_NESTED_KEYS = ("proxy_retrain",)
#: search settings a space parameter may override
SEARCH_SPACE_KEYS = tuple(k for k in SEARCH_KEYS if k not in SEARCH_PAIR_KEYS + SEARCH_NESTED_KEYS)
