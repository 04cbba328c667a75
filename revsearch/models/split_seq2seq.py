"""The multi-split reversible encoder-decoder skeleton shared by the DARTS supernet and derived models.

Layout (docs/method.md, "The split encoder-decoder"): factorized embeddings (V -> e -> width), the encoder hidden state chunked into n
splits of width w = hidden / n, the decoder's into n + 1 splits of the same width w, whose last coupling
function is a fixed cross-attention over the encoder output. Which coupling functions fill the other
slots is the caller's business (``node_factory``): mixed DARTS nodes for the supernet, single chosen ops
for a derived model. Nothing here knows about α.

Context handed to every coupling function (see ``revsearch.ops``): encoder ``(pad_mask,)``, decoder
``(pad_mask, memory, memory_pad_mask)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..ops import OpConfig, build_op
from ..ops.incremental import IncrementalState, start_decoding_state, supports_incremental
from ..reversible import MultiSplitCoupling, ReversibleStack
from ..special_tokens import PAD_ID


@dataclass
class SplitSeq2SeqConfig:
    vocab_size: int
    hidden: int = 512            # encoder width d; every split has width hidden / splits
    splits: int = 2              # encoder splits n; the decoder has n + 1
    embed_dim: int = 256         # factorized embedding width e
    encoder_layers: int = 2
    decoder_layers: int = 2
    heads: int = 8
    dropout: float = 0.1
    pooling: str = "max"         # how a node merges the other splits: max | mean
    tie_embeddings: bool = True
    max_len: int = 1024
    mode: str = "reversible"     # reversible | plain | checkpoint (same weights, different backward)

    def __post_init__(self):
        if self.splits < 2:
            raise ConfigError(f"splits must be >= 2, got {self.splits}")
        if self.hidden % self.splits:
            raise ConfigError(f"hidden size {self.hidden} is not divisible by splits {self.splits}")
        if self.pooling not in ("max", "mean"):
            raise ConfigError(f"pooling must be 'max' or 'mean', got {self.pooling!r}")
        if min(self.encoder_layers, self.decoder_layers) < 1:
            raise ConfigError("encoder_layers and decoder_layers must be >= 1")
        if self.vocab_size < 4:
            raise ConfigError(f"vocab_size must be >= 4 (pad, unk, bos, eos), got {self.vocab_size}")

    @property
    def split_width(self) -> int:
        return self.hidden // self.splits

    @property
    def decoder_hidden(self) -> int:
        return self.split_width * (self.splits + 1)

    def op_config(self, causal: bool) -> OpConfig:
        return OpConfig(dim=self.split_width, causal=causal, heads=self.heads, dropout=self.dropout,
                        memory_dim=self.hidden if causal else None)


def pool_splits(splits: Sequence[Tensor], how: str) -> Tensor:
    """Merge the other n-1 splits element-wise into one input for a node (docs/method.md, "A search node")."""
    if len(splits) == 1:
        return splits[0]
    stacked = torch.stack(list(splits))
    return stacked.amax(0) if how == "max" else stacked.mean(0)


class ChosenOpCoupling(nn.Module):
    """A coupling function with one fixed op: pool the other splits, apply the op (derived models)."""

    def __init__(self, op_name: str, op_config: OpConfig, pooling: str):
        super().__init__()
        self.op_name, self.pooling = op_name, pooling
        self.op = build_op(op_name, op_config)

    def forward(self, others: Sequence[Tensor], pad_mask=None, memory=None, memory_pad_mask=None):
        return self.op(pool_splits(others, self.pooling), pad_mask, memory, memory_pad_mask)

    def step(self, others: Sequence[Tensor], cache: dict, memory=None, memory_pad_mask=None):
        """One decoding position (``ops.incremental``): the others are the splits at that position."""
        return self.op.step(pool_splits(others, self.pooling), cache, memory, memory_pad_mask)


class CrossAttentionCoupling(ChosenOpCoupling):
    """The decoder's fixed last coupling G_{n+1}: cross-attention from the pooled other splits."""

    def __init__(self, config: "SplitSeq2SeqConfig"):
        super().__init__("cross_attn", config.op_config(causal=True), config.pooling)


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    position = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table


# node_factory(side, layer, split) -> coupling function; side is "encoder" or "decoder"
NodeFactory = Callable[[str, int, int], nn.Module]


class SplitEncoderDecoder(nn.Module):
    """``encode(src) -> (memory, src_pad_mask)``, ``decode(tgt_in, memory, src_pad_mask) -> logits``."""

    def __init__(self, config: SplitSeq2SeqConfig, node_factory: NodeFactory):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=PAD_ID)
        nn.init.normal_(self.embed.weight, std=c.embed_dim ** -0.5)
        self.register_buffer("positions", sinusoidal_positions(c.max_len, c.embed_dim).float(),
                             persistent=False)
        self.encoder_in = nn.Linear(c.embed_dim, c.hidden)
        self.decoder_in = nn.Linear(c.embed_dim, c.decoder_hidden)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = ReversibleStack([
            MultiSplitCoupling([node_factory("encoder", layer, k) for k in range(c.splits)])
            for layer in range(c.encoder_layers)], mode=c.mode)
        self.decoder = ReversibleStack([
            MultiSplitCoupling([node_factory("decoder", layer, k) for k in range(c.splits)]
                               + [CrossAttentionCoupling(c)])
            for layer in range(c.decoder_layers)], mode=c.mode)
        self.encoder_norm = nn.LayerNorm(c.hidden)
        self.decoder_norm = nn.LayerNorm(c.decoder_hidden)
        self.decoder_out = nn.Linear(c.decoder_hidden, c.embed_dim)
        self.output_bias = nn.Parameter(torch.zeros(c.vocab_size))
        if not c.tie_embeddings:
            self.output = nn.Linear(c.embed_dim, c.vocab_size, bias=False)

    def set_mode(self, mode: str) -> None:
        """Switch both stacks between reversible, plain and checkpointed backward (same weights)."""
        self.encoder.mode = self.decoder.mode = mode
        self.config.mode = mode

    def _embed(self, tokens: Tensor) -> Tensor:
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len {self.config.max_len}")
        x = self.embed(tokens) * math.sqrt(self.config.embed_dim)
        return self.dropout(x + self.positions[: tokens.shape[1]].to(x.dtype))

    def _splits(self, x: Tensor, count: int, pad_mask: Tensor) -> List[Tensor]:
        x = x.masked_fill(pad_mask[..., None], 0.0)
        return list(torch.chunk(x, count, dim=-1))

    def encode(self, src: Tensor) -> Tuple[Tensor, Tensor]:
        pad_mask = src.eq(PAD_ID)
        splits = self._splits(self.encoder_in(self._embed(src)), self.config.splits, pad_mask)
        outputs = self.encoder(splits, (pad_mask,))
        memory = self.encoder_norm(torch.cat(outputs, dim=-1)).masked_fill(pad_mask[..., None], 0.0)
        return memory, pad_mask

    def decode(self, tgt_in: Tensor, memory: Tensor, src_pad_mask: Tensor) -> Tensor:
        pad_mask = tgt_in.eq(PAD_ID)
        splits = self._splits(self.decoder_in(self._embed(tgt_in)), self.config.splits + 1, pad_mask)
        outputs = self.decoder(splits, (pad_mask, memory, src_pad_mask))
        h = self.decoder_out(self.decoder_norm(torch.cat(outputs, dim=-1)))
        weight = self.embed.weight if self.config.tie_embeddings else self.output.weight
        return h @ weight.t() + self.output_bias

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, src_pad_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_pad_mask)

    # --- incremental decoding (ops.incremental): one position at a time, no reconstruction ------------
    def supports_incremental(self) -> bool:
        """True for derived models (every coupling function has ``step``); a supernet's mixed nodes
        have none, and decoding falls back to re-running the prefix."""
        return all(supports_incremental(g) for layer in self.decoder.layers for g in layer.functions)

    def start_decoding(self, memory: Tensor, src_pad_mask: Tensor) -> IncrementalState:
        return start_decoding_state(memory, src_pad_mask)

    def decode_step(self, tokens: Tensor, state: IncrementalState) -> Tensor:
        """Logits ``[B, V]`` after feeding ``tokens`` (``[B, 1]``, the newest token of each row) at
        position ``state.position``; equals ``decode(prefix)[:, -1]`` to rounding. The reversible stack's
        layers run forward only, each coupling function on the newest position with its cache."""
        t = state.position
        if t >= self.config.max_len:
            raise ValueError(f"sequence length {t + 1} exceeds max_len {self.config.max_len}")
        x = self.embed(tokens) * math.sqrt(self.config.embed_dim)
        x = self.dropout(x + self.positions[t:t + 1].to(x.dtype))
        splits = list(torch.chunk(self.decoder_in(x), self.config.splits + 1, dim=-1))
        memory, memory_pad_mask = state.extras["memory"], state.extras["memory_pad_mask"]
        for layer in self.decoder.layers:
            for k, g in enumerate(layer.functions):
                others = [s for j, s in enumerate(splits) if j != k]
                splits[k] = splits[k] + g.step(others, state.cache(g), memory, memory_pad_mask)
        h = self.decoder_out(self.decoder_norm(torch.cat(splits, dim=-1)))
        weight = self.embed.weight if self.config.tie_embeddings else self.output.weight
        state.position += 1
        return (h @ weight.t() + self.output_bias)[:, 0]
