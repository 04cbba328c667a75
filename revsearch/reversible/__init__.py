"""The reversible engine: multi-split coupling, backprop with reconstruction, plain reference mode.

Knows nothing of DARTS, Tune or MLflow.
"""
from .coupling import MultiSplitCoupling, accumulate_into_dot_grad
from .memory import SavedTensorMeter
from .rng import RNGState, replayed
from .stack import MODES, ReversibleStack

__all__ = ["MultiSplitCoupling", "ReversibleStack", "MODES", "RNGState", "replayed",
           "SavedTensorMeter", "accumulate_into_dot_grad"]
