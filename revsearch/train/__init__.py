"""Training derived models and the baseline: loss, schedule, trainer with resumable checkpoints,
greedy / beam decoding, sacreBLEU + chrF evaluation."""
from .checkpoint import (average_checkpoints, build_model, load_checkpoint, load_for_inference,
                         save_checkpoint)
from .decoding import DecodeConfig, beam_search, greedy_decode, translate, translate_ids
from .evaluate import EvalConfig, EvalResult, evaluate_model, score
from ..learning import InverseSqrtSchedule, label_smoothed_nll
from .trainer import TrainConfig, Trainer, TrainResult

__all__ = ["average_checkpoints", "build_model", "load_checkpoint", "load_for_inference", "save_checkpoint",
           "DecodeConfig", "beam_search", "greedy_decode", "translate", "translate_ids", "EvalConfig",
           "EvalResult", "evaluate_model", "score", "label_smoothed_nll", "InverseSqrtSchedule",
           "TrainConfig", "Trainer", "TrainResult"]
