"""The DARTS supernet: the split encoder-decoder with a mixed node in every searchable slot.

The encoder has n searchable nodes per layer, the decoder n searchable nodes plus the fixed
cross-attention. A cell of ``cell_layers`` (s) layers carries the architecture parameters; deeper stacks
reuse them cyclically when ``share_alpha`` is on, or give every layer its own α when off (then the cell
is the whole stack). ``config.mode`` runs the same supernet reversibly or with plain autograd (plain
DARTS) for comparison.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..models.split_seq2seq import SplitEncoderDecoder, SplitSeq2SeqConfig
from ..ops import DECODER_OPS, ENCODER_OPS, validate_op_names
from .node import MixedNode, new_alpha

SIDES = ("encoder", "decoder")


@dataclass
class SupernetConfig(SplitSeq2SeqConfig):
    encoder_ops: Tuple[str, ...] = ENCODER_OPS
    decoder_ops: Tuple[str, ...] = DECODER_OPS
    cell_layers: Optional[int] = None   # s; None = every layer is searched separately
    share_alpha: bool = True

    def __post_init__(self):
        super().__post_init__()
        self.encoder_ops = validate_op_names(self.encoder_ops, decoder=False)
        self.decoder_ops = validate_op_names(self.decoder_ops, decoder=True)
        if self.cell_layers is not None and self.cell_layers < 1:
            raise ConfigError(f"cell_layers must be >= 1, got {self.cell_layers}")

    def ops(self, side: str) -> Tuple[str, ...]:
        return self.encoder_ops if side == "encoder" else self.decoder_ops

    def layers(self, side: str) -> int:
        return self.encoder_layers if side == "encoder" else self.decoder_layers

    def cell_size(self, side: str) -> int:
        """How many distinct layers of α the side has."""
        if self.share_alpha and self.cell_layers is not None:
            return min(self.cell_layers, self.layers(side))
        return self.layers(side)


class Supernet(SplitEncoderDecoder):
    """``alphas[side][cell_layer][split]`` are the architecture parameters; everything else is θ."""

    def __init__(self, config: SupernetConfig):
        alphas: Dict[str, List[List[nn.Parameter]]] = {
            side: [[new_alpha(len(config.ops(side))) for _ in range(config.splits)]
                   for _ in range(config.cell_size(side))] for side in SIDES}

        def node_factory(side: str, layer: int, split: int) -> MixedNode:
            alpha = alphas[side][layer % config.cell_size(side)][split]
            return MixedNode(config.ops(side), config.op_config(causal=side == "decoder"),
                             config.pooling, alpha)

        super().__init__(config, node_factory)
        self.encoder_alphas = nn.ParameterList([a for row in alphas["encoder"] for a in row])
        self.decoder_alphas = nn.ParameterList([a for row in alphas["decoder"] for a in row])

    def alpha_grid(self, side: str) -> List[List[nn.Parameter]]:
        flat = list(self.encoder_alphas if side == "encoder" else self.decoder_alphas)
        n = self.config.splits
        return [flat[i:i + n] for i in range(0, len(flat), n)]

    def arch_parameters(self) -> List[nn.Parameter]:
        return list(self.encoder_alphas) + list(self.decoder_alphas)

    def weight_parameters(self) -> List[nn.Parameter]:
        arch = {id(a) for a in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    @torch.no_grad()
    def alpha_entropy(self) -> float:
        """Mean entropy (nats) of the nodes' op distributions: falls as the search decides."""
        values = [-(torch.softmax(a, 0) * torch.log_softmax(a, 0)).sum() for a in self.arch_parameters()]
        return float(torch.stack(values).mean())
