"""The standard Transformer baseline (Vaswani et al. 2017) with the project's seq2seq interface.

Factorized embeddings as in the searched models (docs/method.md, "The split encoder-decoder"):
``Embedding(V, e)`` then ``Linear(e, d)``, sinusoidal positions added at width d; the output goes back
d -> e and is multiplied with the embedding matrix when ``tie_embeddings`` (else a separate
``Linear(e, V)``). Encoder and decoder are stacks of ``torch.nn`` Transformer layers, pre-LN by default
(stable with short warm-up), post-LN optional.

Interface shared with the derived models:
``encode(src) -> (memory [B,S,D], src_pad_mask [B,S] True at pad)``,
``decode(tgt_in, memory, src_pad_mask) -> logits [B,T,V]`` (causal), ``forward(src, tgt_in) -> logits``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..ops.attention import attend
from ..ops.incremental import IncrementalState, start_decoding_state
from ..special_tokens import PAD_ID


@dataclass
class TransformerConfig:
    vocab_size: int
    embed_dim: int = 256          # factorized embedding width e
    hidden: int = 512             # model width d
    encoder_layers: int = 6
    decoder_layers: int = 6
    heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    pre_norm: bool = True
    tie_embeddings: bool = True
    max_len: int = 1024

    def __post_init__(self):
        if self.vocab_size < 4:
            raise ConfigError(f"vocab_size must be >= 4 (pad, unk, bos, eos), got {self.vocab_size}")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden size {self.hidden} is not divisible by heads {self.heads}")
        if min(self.encoder_layers, self.decoder_layers) < 1:
            raise ConfigError("encoder_layers and decoder_layers must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


def sinusoidal_table(length: int, dim: int) -> Tensor:
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return table


class FactorizedEmbedding(nn.Module):
    """Token embedding V -> e -> d, scaled, plus sinusoidal positions; dropout."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, dropout: float, max_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        nn.init.normal_(self.embed.weight, 0.0, embed_dim ** -0.5)
        with torch.no_grad():
            self.embed.weight[PAD_ID].zero_()
        self.proj = nn.Linear(embed_dim, hidden, bias=False)
        self.scale = math.sqrt(embed_dim)
        self.register_buffer("positions", sinusoidal_table(max_len, hidden), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.size(1)
        if length > self.positions.size(0):
            self.positions = sinusoidal_table(2 * length, self.positions.size(1)).to(self.positions.device)
        x = self.proj(self.embed(tokens) * self.scale) + self.positions[:length]
        return self.dropout(x)


class StandardTransformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        self.src_embed = FactorizedEmbedding(c.vocab_size, c.embed_dim, c.hidden, c.dropout, c.max_len)
        self.tgt_embed = FactorizedEmbedding(c.vocab_size, c.embed_dim, c.hidden, c.dropout, c.max_len)
        # one joint vocabulary: source, target and output share the V x e matrix
        self.tgt_embed.embed = self.src_embed.embed

        def enc_layer():
            return nn.TransformerEncoderLayer(c.hidden, c.heads, c.ffn_dim, c.dropout, batch_first=True,
                                              norm_first=c.pre_norm)

        def dec_layer():
            return nn.TransformerDecoderLayer(c.hidden, c.heads, c.ffn_dim, c.dropout, batch_first=True,
                                              norm_first=c.pre_norm)

        self.encoder = nn.TransformerEncoder(enc_layer(), c.encoder_layers,
                                             norm=nn.LayerNorm(c.hidden) if c.pre_norm else None,
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec_layer(), c.decoder_layers,
                                             norm=nn.LayerNorm(c.hidden) if c.pre_norm else None)
        if c.attention_dropout != c.dropout:
            for mod in self.modules():
                if isinstance(mod, nn.MultiheadAttention):
                    mod.dropout = c.attention_dropout
        self.out_proj = nn.Linear(c.hidden, c.embed_dim, bias=False)
        self.out_bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.out_embed = None if c.tie_embeddings else nn.Linear(c.embed_dim, c.vocab_size, bias=False)

    def encode(self, src: Tensor) -> Tuple[Tensor, Tensor]:
        pad = src.eq(PAD_ID)
        memory = self.encoder(self.src_embed(src), src_key_padding_mask=pad)
        return memory, pad

    def decode(self, tgt_in: Tensor, memory: Tensor, src_pad_mask: Tensor) -> Tensor:
        length = tgt_in.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=tgt_in.device).triu(1)
        h = self.decoder(self.tgt_embed(tgt_in), memory, tgt_mask=causal,
                         tgt_key_padding_mask=tgt_in.eq(PAD_ID), memory_key_padding_mask=src_pad_mask)
        h = self.out_proj(h)
        weight = self.src_embed.embed.weight if self.out_embed is None else self.out_embed.weight
        return nn.functional.linear(h, weight, self.out_bias)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, pad = self.encode(src)
        return self.decode(tgt_in, memory, pad)

    # --- incremental decoding: torch's decoder layer keeps no cache, so the step path below reuses
    # --- its weights (same parameters, same checkpoint) with keys/values kept per layer
    def supports_incremental(self) -> bool:
        return True

    def start_decoding(self, memory: Tensor, src_pad_mask: Tensor) -> IncrementalState:
        return start_decoding_state(memory, src_pad_mask)

    def decode_step(self, tokens: Tensor, state: IncrementalState) -> Tensor:
        """Logits ``[B, V]`` after feeding ``tokens`` ``[B, 1]`` at position ``state.position``; equals
        ``decode(prefix)[:, -1]`` to rounding."""
        t = state.position
        emb = self.tgt_embed
        if t >= emb.positions.size(0):
            emb.positions = sinusoidal_table(2 * (t + 1), emb.positions.size(1)).to(emb.positions.device)
        x = emb.dropout(emb.proj(emb.embed(tokens) * emb.scale) + emb.positions[t:t + 1])
        memory, memory_pad_mask = state.extras["memory"], state.extras["memory_pad_mask"]
        for layer in self.decoder.layers:
            x = decoder_layer_step(layer, x, state.cache(layer), memory, memory_pad_mask)
        if self.decoder.norm is not None:
            x = self.decoder.norm(x)
        weight = self.src_embed.embed.weight if self.out_embed is None else self.out_embed.weight
        state.position += 1
        return nn.functional.linear(self.out_proj(x), weight, self.out_bias)[:, 0]

    def spec(self) -> dict:
        """What a checkpoint needs to rebuild this model (``revsearch.train.checkpoint.build_model``)."""
        return {"builder": "revsearch.models.transformer:build_from_config", "config": asdict(self.config)}


def _attention(mha: nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor, key_pad: Tensor = None) -> Tensor:
    """``nn.MultiheadAttention``'s math on projected q [B,1,D], k/v [B,S,D]; key_pad: bool[B,S] or None.
    The attention itself is the ops' ``attend`` (same heads split, scaling and softmax); only the output
    projection comes from ``mha``'s weights here."""
    mask = None if key_pad is None else key_pad[:, None, None, :]
    out = attend(q, k, v, mask, mha.num_heads, mha.dropout, mha.training)
    return nn.functional.linear(out, mha.out_proj.weight, mha.out_proj.bias)


def decoder_layer_step(layer: nn.TransformerDecoderLayer, x: Tensor, cache: dict, memory: Tensor,
                       memory_pad_mask: Tensor) -> Tensor:
    """``layer(prefix)[:, -1:]`` from the newest position ``x`` [B,1,D]: self-attention keys/values of the
    earlier positions and the memory's projected keys/values live in ``cache``. Mirrors
    ``TransformerDecoderLayer.forward`` (both norm placements)."""
    d = x.shape[-1]

    def self_block(h: Tensor) -> Tensor:
        sa = layer.self_attn
        q, k, v = nn.functional.linear(h, sa.in_proj_weight, sa.in_proj_bias).chunk(3, dim=-1)
        if "keys" in cache:
            k = torch.cat([cache["keys"], k], dim=1)
            v = torch.cat([cache["values"], v], dim=1)
        cache["keys"], cache["values"] = k, v
        return layer.dropout1(_attention(sa, q, k, v))

    def cross_block(h: Tensor) -> Tensor:
        ca = layer.multihead_attn
        if "memory_keys" not in cache:
            kv = nn.functional.linear(memory, ca.in_proj_weight[d:], ca.in_proj_bias[d:])
            cache["memory_keys"], cache["memory_values"] = kv.chunk(2, dim=-1)
        q = nn.functional.linear(h, ca.in_proj_weight[:d], ca.in_proj_bias[:d])
        return layer.dropout2(_attention(ca, q, cache["memory_keys"], cache["memory_values"], memory_pad_mask))

    def ff_block(h: Tensor) -> Tensor:
        return layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(h)))))

    if layer.norm_first:
        x = x + self_block(layer.norm1(x))
        x = x + cross_block(layer.norm2(x))
        return x + ff_block(layer.norm3(x))
    x = layer.norm1(x + self_block(x))
    x = layer.norm2(x + cross_block(x))
    return layer.norm3(x + ff_block(x))


def build_from_config(config: dict) -> StandardTransformer:
    return StandardTransformer(TransformerConfig(**config))


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (unique: tied weights count once) parameters."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total
