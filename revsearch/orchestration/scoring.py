"""Scoring a retrained candidate: sacreBLEU on the validation set (what rankings and the registry decide
on) and on the test set (reported only), with one decoder setting for both.

A one-process retrain trial scores the model it just trained, on the device it trained on. A
data-parallel trial (``resources.workers > 1``) holds no CPU or GPU of its own once its Ray Train run
has ended (stages.py), so it scores in a Ray task that asks for one worker's ``cpu``/``gpu``
(``data_parallel_trial.run_with_worker_resources``); that task rebuilds the model and the data from the
checkpoint files and the prepared corpus instead of receiving them.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from ..train.checkpoint import load_checkpoint, load_model_state
from ..train.decoding import DecodeConfig
from ..train.evaluate import EvalConfig, EvalResult, evaluate_model
from ..train.trainer import TrainResult


def score_retrained(model, data, retrain: Dict[str, Any],
                    device: Optional[torch.device] = None) -> Tuple[EvalResult, EvalResult]:
    """(validation, test) results of ``model`` (already holding the weights to score, on ``device``)."""
    config = EvalConfig(decode=DecodeConfig(beam_size=retrain["beam"], length_penalty=retrain["length_penalty"]))
    where = device or "cpu"
    return (evaluate_model(model, data.tokenizer, data.valid_pairs, config, where),
            evaluate_model(model, data.tokenizer, data.test_pairs, config, where))


def load_scored_weights(model, result: TrainResult) -> str:
    """Load into a freshly built ``model`` the weights a run is scored and registered with: the average of
    the last k checkpoints when one was written, else the best by validation NLL. Returns the file."""
    path = result.checkpoints.get("avg") or result.checkpoints.get("best", "")
    if path:
        load_model_state(model, load_checkpoint(path)["model"], path)
    model.eval()
    return path


def score_candidate_task(context: Dict[str, Any], candidate: Dict[str, Any],
                         result: TrainResult) -> Tuple[str, EvalResult, EvalResult]:
    """The scoring of a data-parallel retrain, run as a Ray task holding one worker's resources: rebuild
    the candidate's model and data, load its scored weights, decode both sets. Returns (the checkpoint
    file scored, validation, test)."""
    from .candidates import build_retrain_model
    from .data_prep import PreparedData, encoded_data
    from .search_trial import trial_device

    torch.set_num_threads(max(1, int(context.get("threads", 1))))
    data = encoded_data(PreparedData(**context["prepared"]), candidate["vocab_size"],
                        candidate["spm_model_type"], candidate["max_len"])
    model, _ = build_retrain_model(candidate, data.tokenizer.vocab_size)
    checkpoint = load_scored_weights(model, result)
    device = trial_device(float(context.get("gpu", 0)))
    if device is not None:
        model.to(device)
    validation, test = score_retrained(model, data, context["retrain"], device)
    return checkpoint, validation, test
