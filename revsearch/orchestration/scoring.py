"""Scoring a retrained candidate: sacreBLEU on the validation set (what rankings and the registry decide
on) and on the test set (reported only), with one decoder setting for both.

A one-process retrain trial scores the model it just trained, on the device it trained on. A
data-parallel trial (``resources.workers > 1``) holds no CPU or GPU of its own once its Ray Train run
has ended (stages.py), so it scores in a Ray task that asks for one worker's ``cpu``/``gpu``
(``data_parallel_trial.run_with_worker_resources``); that task rebuilds the model from the checkpoint
files, and the tokenizer and the validation/test text from the prepared corpus, instead of receiving them.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from ..train.decoding import DecodeConfig
from ..train.evaluate import EvalConfig, EvalResult, evaluate_model
from ..train.trainer import TrainResult, load_evaluated_weights


def score_retrained(model, data, retrain: Dict[str, Any],
                    device: Optional[torch.device] = None) -> Tuple[EvalResult, EvalResult]:
    """(validation, test) results of ``model`` (already holding the weights to score, on ``device``)."""
    config = EvalConfig(decode=DecodeConfig(beam_size=retrain["beam"], length_penalty=retrain["length_penalty"]))
    where = device or "cpu"
    return (evaluate_model(model, data.tokenizer, data.valid_pairs, config, where),
            evaluate_model(model, data.tokenizer, data.test_pairs, config, where))


def score_candidate_task(context: Dict[str, Any], candidate: Dict[str, Any],
                         result: TrainResult) -> Tuple[str, EvalResult, EvalResult]:
    """The scoring of a data-parallel retrain, run as a Ray task holding one worker's resources: rebuild
    the candidate's model and data, load its scored weights, decode both sets. Returns (the checkpoint
    file scored, validation, test)."""
    from types import SimpleNamespace
    from .candidates import build_retrain_model
    from .data_prep import PreparedData, load_prepared_corpus, tokenizer_for
    from .search_trial import trial_device

    torch.set_num_threads(max(1, int(context.get("threads", 1))))
    prepared = PreparedData(**context["prepared"])
    corpus = load_prepared_corpus(prepared, candidate["max_len"])   # the text; only valid/test are decoded
    tokenizer = tokenizer_for(prepared, candidate["vocab_size"], candidate["spm_model_type"])
    data = SimpleNamespace(tokenizer=tokenizer, valid_pairs=corpus.valid, test_pairs=corpus.test)
    model, _ = build_retrain_model(candidate, tokenizer.vocab_size)
    checkpoint = load_evaluated_weights(model, result)
    device = trial_device(float(context.get("gpu", 0)))
    if device is not None:
        model.to(device)
    validation, test = score_retrained(model, data, context["retrain"], device)
    return checkpoint, validation, test
