"""Derived models: a discrete encoder-decoder built from a genotype.

Same split topology as the supernet (n encoder splits, n + 1 decoder splits with the fixed
cross-attention), each searchable slot filled with the op the genotype chose, and the genotype's cell
stacked cyclically to the requested depth. Trained with plain backprop by default (docs/method.md,
"Backprop with reconstruction": only the search needs reconstruction); ``mode="reversible"`` is
available for deep or wide models.
"""
from __future__ import annotations

from dataclasses import replace

from ..errors import ConfigError
from ..models.split_seq2seq import ChosenOpCoupling, SplitEncoderDecoder, SplitSeq2SeqConfig
from .genotype import Genotype


def build_derived_model(genotype: Genotype, config: SplitSeq2SeqConfig) -> SplitEncoderDecoder:
    if config.splits != genotype.splits:
        raise ConfigError(f"genotype has {genotype.splits} splits but the model config has {config.splits}")
    config = replace(config, pooling=genotype.pooling)

    def node_factory(side: str, layer: int, split: int) -> ChosenOpCoupling:
        cell = genotype.side(side).cell
        op = cell[layer % len(cell)][split]
        return ChosenOpCoupling(op, config.op_config(causal=side == "decoder"), config.pooling)

    model = SplitEncoderDecoder(config, node_factory)
    model.genotype = genotype
    return model


BUILDER = "revsearch.search.derive:build_from_spec"


def derived_spec(genotype: Genotype, config: SplitSeq2SeqConfig) -> dict:
    """A checkpoint-embeddable description (plain JSON types) that ``build_from_spec`` rebuilds."""
    from dataclasses import asdict
    return {"builder": BUILDER, "config": {"genotype": genotype.to_dict(), "model": asdict(config)}}


def build_from_spec(config: dict) -> SplitEncoderDecoder:
    genotype = Genotype.from_dict(config["genotype"], source="checkpoint genotype")
    model_config = dict(config["model"])
    return build_derived_model(genotype, SplitSeq2SeqConfig(**model_config))
