"""Label-smoothed cross-entropy over the target tokens, padding ignored."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ..special_tokens import PAD_ID


def label_smoothed_nll(logits: Tensor, target: Tensor, smoothing: float = 0.1,
                       ignore_index: int = PAD_ID) -> Tuple[Tensor, Tensor, int]:
    """Summed (smoothed loss, plain NLL) over non-pad tokens, and the number of those tokens.

    The smoothing mass ``smoothing`` is spread uniformly over the vocabulary (fairseq's formulation:
    ``(1 - eps) * nll + eps * mean_v(-log p_v)``). Divide by the token count for a per-token loss."""
    loss, nll = label_smoothed_sums(logits, target, smoothing, ignore_index)
    return loss, nll, int(target.ne(ignore_index).sum())


def label_smoothed_sums(logits: Tensor, target: Tensor, smoothing: float = 0.1,
                        ignore_index: int = PAD_ID) -> Tuple[Tensor, Tensor]:
    """``label_smoothed_nll`` without the token count: reading that count from a GPU tensor is a device
    sync, which the data-parallel steps avoid by taking it on the host (``data.batching.Batch``)."""
    # half precision is lifted to float32 for the softmax; float64 stays float64 (the gradient checks)
    logp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                             dim=-1)
    mask = target.ne(ignore_index)
    tgt = target.masked_fill(~mask, 0).unsqueeze(-1)
    nll = -logp.gather(-1, tgt).squeeze(-1)
    smooth = -logp.mean(-1)
    loss = (1.0 - smoothing) * nll + smoothing * smooth
    loss = loss.masked_fill(~mask, 0.0).sum()
    nll = nll.masked_fill(~mask, 0.0).sum()
    return loss, nll


def sequence_loss(logits: Tensor, target: Tensor, label_smoothing: float) -> Tensor:
    """The same loss per target token (what the search differentiates): the smoothed sum divided by the
    number of non-pad tokens."""
    loss, _, ntokens = label_smoothed_nll(logits, target, label_smoothing)
    return loss / max(ntokens, 1)
