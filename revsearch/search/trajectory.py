"""α over time: softmax(α) of every node at every report of a search, for the α-trajectory picture.

Small by construction (reports × nodes × ops floats: 600 reports of a 30k-step search at 2 × 2 × 14
nodes is ~34k numbers), so the whole history lives in the search loop's checkpointed state and a resumed
trial keeps it. The state holds only tensors, so it loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor

from .genotype import SIDES


class AlphaTrajectory:
    def __init__(self) -> None:
        self.steps: List[int] = []
        #: per side, one float tensor [cell layers, splits, candidates] per recorded step
        self.probabilities: Dict[str, List[Tensor]] = {side: [] for side in SIDES}

    def __len__(self) -> int:
        return len(self.steps)

    @torch.no_grad()
    def record(self, step: int, supernet) -> None:
        """Append softmax(α) at ``step``. Entries at or after ``step`` are dropped first, so a trial that
        Tune restarted from an earlier checkpoint does not keep a stale future."""
        while self.steps and self.steps[-1] >= step:
            self.steps.pop()
            for side in SIDES:
                self.probabilities[side].pop()
        self.steps.append(int(step))
        for side in SIDES:
            grid = supernet.alpha_grid(side)
            self.probabilities[side].append(torch.stack(
                [torch.stack([torch.softmax(a.detach().float().cpu(), 0) for a in row]) for row in grid]))

    def side(self, side: str) -> Tensor:
        """[steps, cell layers, splits, candidates] (empty when nothing was recorded)."""
        rows = self.probabilities[side]
        return torch.stack(rows) if rows else torch.zeros(0)

    def state_dict(self) -> Dict[str, Tensor]:
        return {"steps": torch.tensor(self.steps, dtype=torch.long),
                **{side: self.side(side) for side in SIDES}}

    def load_state_dict(self, state: Dict[str, Tensor]) -> None:
        self.steps = [int(s) for s in state["steps"].tolist()]
        self.probabilities = {side: list(state[side].unbind(0)) if self.steps else [] for side in SIDES}
