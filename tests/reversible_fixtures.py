"""Coupling functions for engine tests: small, random (dropout), and reading a context tensor with a
padding mask, like the decoder's cross-attention does."""
import torch
from torch import nn

from revsearch.reversible import MultiSplitCoupling, ReversibleStack


class ToyCoupling(nn.Module):
    """G(others, memory, memory_pad_mask) = dropout(tanh(W·max(others))) + attention over memory."""

    def __init__(self, width: int, memory_width: int, dropout: float = 0.1):
        super().__init__()
        self.mix = nn.Linear(width, width)
        self.query = nn.Linear(width, memory_width)
        self.value = nn.Linear(memory_width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, others, memory=None, memory_pad_mask=None):
        h = torch.stack(others).amax(0)
        out = self.drop(torch.tanh(self.mix(h)))
        if memory is not None:
            scores = self.query(h) @ memory.transpose(1, 2)
            if memory_pad_mask is not None:
                scores = scores.masked_fill(memory_pad_mask[:, None, :], float("-inf"))
            out = out + self.drop(torch.softmax(scores, -1)) @ self.value(memory)
        return out


def make_stack(splits: int, depth: int, width: int = 6, memory_width: int = 10, dropout: float = 0.1,
               dtype=torch.float64, seed: int = 0) -> ReversibleStack:
    torch.manual_seed(seed)
    layers = [MultiSplitCoupling([ToyCoupling(width, memory_width, dropout) for _ in range(splits)])
              for _ in range(depth)]
    return ReversibleStack(layers).to(dtype)


def make_inputs(splits: int, width: int = 6, memory_width: int = 10, batch: int = 3, length: int = 5,
                memory_length: int = 7, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, length, width, generator=g, dtype=dtype, requires_grad=True)
          for _ in range(splits)]
    memory = torch.randn(batch, memory_length, memory_width, generator=g, dtype=dtype, requires_grad=True)
    mask = torch.zeros(batch, memory_length, dtype=torch.bool)
    mask[0, -3:] = True  # padding in the first sequence
    return xs, memory, mask
