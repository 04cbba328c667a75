"""The ``retrain`` section: stage 2, the best genotypes trained from scratch beside the baselines.

Rules that need the rest of the sweep (``top_k`` ≤ ``num_samples``, ``hidden`` divisible by every
possible split count) are checked by ``SweepConfig``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

from pydantic import AfterValidator, Field, model_validator
from typing_extensions import Annotated

from .sweep_errors import problem, quoted_value
from .sweep_fields import Fraction, Int, Number, OptInt, OptNumber, doc
from .sweep_sections import MAX_RANDOM_GENOTYPES, MAX_SEEDS, Section, as_dict

SEED = Int(0, 2 ** 31 - 1)


class SizeSection(Section):
    """Equal-size retraining (search/sizing.py)."""
    match: Literal["params", "width"] = Field(
        "params", description="`params`: every retrained model (derived, baseline, random) gets the width that "
                              "brings its parameter count nearest the target; `width`: every model keeps the "
                              "retrain width (`hidden`), whatever its count")
    params: OptInt(1) = Field(None, description="the target count; null: the Transformer baseline's count at the "
                                                "retrain width (`hidden`, or the best search trial's) and depth",
                              **doc(rules="only with `match: params`"))
    tolerance: Number(gt=0.0, lt=1.0) = Field(0.03, description="largest allowed \\|count − target\\| / target")

    @model_validator(mode="after")
    def _params_only_with_params(self):
        if self.match == "width" and self.params is not None:
            raise problem(("params",), "only used with retrain.size.match: params (match is width)")
        return self


SIZE_DEFAULTS: Dict[str, Any] = SizeSection().model_dump()


class RetrainSection(Section):
    top_k: Int(0) = Field(2, description="distinct genotypes retrained (0: search only)",
                          **doc(rules="≤ `num_samples`"))
    steps: OptInt(1) = Field(600, description="optimizer steps per model")
    budget_minutes: OptNumber(gt=0.0) = Field(None, description="wall-clock budget per model; with `steps` too, "
                                                                "whichever comes first",
                                              **doc(rules="not both null with `steps`"))
    baseline: bool = Field(True, strict=True, description="also train a standard Transformer of equal embedding "
                                                          "/ depth (and size, see `size`) under the same budget")
    hidden: OptInt(1) = Field(None, description="retrain width (null: the search trial's `hidden`)",
                              **doc(rules="divisible by every possible `splits`"))
    encoder_layers: Int(1) = Field(2, description="encoder depth of the retrained models (the searched cell is "
                                                  "stacked)")
    decoder_layers: Int(1) = Field(2, description="decoder depth of the retrained models")
    dropout: Optional[Fraction] = Field(None, description="null: the search trial's dropout")
    label_smoothing: Fraction = Field(0.1, description="label smoothing of the training loss")
    lr: Number(gt=0.0) = Field(1e-3, description="peak learning rate, inverse-sqrt schedule")
    warmup_steps: Int(0) = Field(100, description="learning-rate warm-up steps")
    max_tokens: Int(1) = Field(2048, description="padded tokens per batch")
    beam: Int(1) = Field(4, description="beam size for the BLEU evaluation (1: greedy)")
    length_penalty: Number(ge=0.0) = Field(1.0, description="GNMT length penalty α")
    average_last: Int(1) = Field(1, description="k > 1: the element-wise mean of the last k numbered checkpoints "
                                                "is the model that is scored and registered "
                                                "(`checkpoint_avg.pt`); 1: the best checkpoint by validation NLL")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision of retraining (fp16 with a dynamic loss scale), see "
                            "docs/precision.md")
    validate_every: Int(0) = Field(200, description="validation interval in steps (0: only at the end)")
    seeds: Optional[Annotated[List[SEED], Field(min_length=1, max_length=MAX_SEEDS)]] = Field(
        None, description="every model is retrained once per seed (one Tune trial and one MLflow child run per "
                          "model and seed); the ranking gives mean ± std over seeds and, per model, the test BLEU "
                          "difference to the Transformer with sacreBLEU's paired bootstrap p-value (the seeds' "
                          "outputs pooled, paired by seed). null: the sweep's `seed`",
        **doc(type="list of int or null",
              allowed=f"null (the sweep's seed) or a list of 1 to {MAX_SEEDS} distinct seeds"))
    size: Annotated[SizeSection, AfterValidator(as_dict)] = Field(
        default_factory=lambda: dict(SIZE_DEFAULTS), description="equal-size retraining",
        **doc(rules="see below"))
    random_genotypes: Int(0, MAX_RANDOM_GENOTYPES) = Field(
        0, description="the sampling baseline: k distinct genotypes drawn uniformly (seeded by `seed`) from the "
                       "first derived genotype's space (its candidate ops, splits and cell depth; `zero` only "
                       "with `search.derive_allow_zero`), retrained under the same budget and size; ranked as "
                       "kind `random`. 2 or more make the verdict's \"vs random\" meaningful")

    @model_validator(mode="after")
    def _rules(self):
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise problem(("seeds",), f"seeds must be distinct, got {quoted_value(self.seeds)}")
        if self.steps is None and self.budget_minutes is None:
            raise problem(("steps",), "retrain.steps and retrain.budget_minutes cannot both be null")
        return self
