"""A DARTS search node: one coupling function G_k of the supernet (docs/method.md, "A search node").

    H   = Pool(other splits)                      max (default) or mean, element-wise
    G_k = sum_o softmax(alpha_k)_o * o~(H)        o~(H) = LayerNorm(H + o(H)) except zero and identity

The softmax is computed inside ``forward`` on every call, never cached outside: the reversible backward
calls the node again and needs the graph from α to the output each time.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..models.split_seq2seq import pool_splits
from ..ops import OpConfig, build_op


def new_alpha(num_ops: int) -> nn.Parameter:
    """DARTS initialisation: tiny random logits, so the mixture starts almost uniform."""
    return nn.Parameter(1e-3 * torch.randn(num_ops))


class MixedNode(nn.Module):
    """Softmax(α)-weighted mixture of candidate ops over the pooled other splits.

    ``alpha`` may be shared by several nodes (stacked cells that share architecture parameters); it is
    registered in each of them, and autograd sums the gradients.
    """

    def __init__(self, op_names: Sequence[str], op_config: OpConfig, pooling: str, alpha: nn.Parameter):
        super().__init__()
        if alpha.shape != (len(op_names),):
            raise ValueError(f"alpha has shape {tuple(alpha.shape)}, expected ({len(op_names)},)")
        self.op_names = tuple(op_names)
        self.pooling = pooling
        self.ops = nn.ModuleList(build_op(name, op_config) for name in self.op_names)
        self.alpha = alpha

    def weights(self) -> Tensor:
        return torch.softmax(self.alpha, dim=0)

    def forward(self, others: Sequence[Tensor], pad_mask=None, memory=None, memory_pad_mask=None):
        h = pool_splits(others, self.pooling)
        weights = self.weights().to(h.dtype)
        out = torch.zeros_like(h)
        for weight, name, op in zip(weights, self.op_names, self.ops):
            if name == "zero":  # contributes nothing; α still gets its gradient through the softmax
                continue
            out = out + weight * op(h, pad_mask, memory, memory_pad_mask)
        return out
