"""A search trial's outer objective that means quality: a short equal-size retrain of its genotype.

The supernet's validation loss compares supernets of different widths and op sets, and favours the
larger one; it says little about how the *derived* model will translate. With ``search.proxy_retrain``
every search trial ends by retraining its current genotype from scratch for a few steps, sized exactly as
stage 2 would size it (``retrain.size``: the same parameter budget for every trial), and reports

* ``proxy_valid_bleu``: sacreBLEU on the first ``valid_sentences`` validation pairs (``beam``), and
* ``proxy_valid_loss``: the per-token validation NLL after the proxy training,

which Optuna can then optimise (``objective.metric: proxy_valid_bleu``, ``mode: max``). Cost: per trial,
``steps`` training steps of the retrain-sized model plus decoding ``valid_sentences`` sentences: with the
quickstart's sizes, 200 steps take about as long as 100 supernet steps of the full op set. Nothing here
reads the test set.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional

import torch


def proxy_retrain(sweep, trial_config: Dict[str, Any], genotype, data, trial_id: str,
                  device: Optional[torch.device] = None) -> Dict[str, float]:
    """Retrain ``genotype`` (the trial's derived genotype) at the sweep's retrain size for
    ``search.proxy_retrain.steps`` steps and score it on validation data. ``data`` is the trial's
    ``EncodedData`` (its tokenizer gives the real vocabulary size the model is counted with);
    ``device``: where to train and decode (None: the CPU)."""
    from ..train.decoding import DecodeConfig
    from ..train.evaluate import EvalConfig, evaluate_model
    from ..train.trainer import TrainConfig, Trainer
    from .candidates import build_retrain_model, retrain_candidates

    proxy = sweep.search.proxy_retrain
    start = time.perf_counter()
    # only the derived candidate is needed; the baseline stays in so the default size target is the one
    # stage 2 uses (the Transformer's count at the retrain width)
    # The target must not depend on the trial: with retrain.hidden null stage 2 takes its reference width from
    # the chosen trial, but trials compared with each other all get the sweep's search.hidden as reference.
    reference = sweep.retrain.hidden or sweep.search.hidden
    retrain = sweep.retrain.model_copy(update={"random_genotypes": 0, "baseline": True, "hidden": reference})
    single = sweep.model_copy(update={"retrain": retrain})
    chosen = [{"rank_in_search": 1, "trial_id": trial_id, "config": dict(trial_config),
               "genotype": genotype.to_json(), "genotype_key": genotype.key(), "search_run_id": "",
               "search_seconds": 0.0}]
    vocab = data.tokenizer.vocab_size
    candidates = retrain_candidates(single, chosen, vocab_size_of=lambda requested, model_type: vocab)
    candidate = next(c for c in candidates if c["kind"] == "derived")
    torch.manual_seed(sweep.seed)
    model, spec = build_retrain_model(candidate, vocab)
    r = sweep.retrain
    config = TrainConfig(lr=proxy["lr"] or r.lr, warmup_steps=min(r.warmup_steps, max(1, proxy["steps"] // 4)),
                         max_tokens=proxy["max_tokens"] or r.max_tokens, label_smoothing=r.label_smoothing,
                         max_steps=proxy["steps"], valid_every=0, log_every=max(1, proxy["steps"]),
                         quiet=True, save_dir=None, seed=sweep.seed, max_positions=candidate["max_len"],
                         precision=r.precision, device=str(device or "cpu"))
    result = Trainer(model, data.train, data.valid, config, model_spec=spec).train()
    pairs = data.valid_pairs[: proxy["valid_sentences"]]
    evaluation = evaluate_model(model, data.tokenizer, pairs, EvalConfig(decode=DecodeConfig(beam_size=proxy["beam"])),
                                device or "cpu")
    return {"proxy_valid_bleu": float(evaluation.bleu), "proxy_valid_loss": float(result.last_valid_nll),
            "proxy_params": float(candidate["params"]), "proxy_seconds": time.perf_counter() - start}


def proxy_retrain_task(context: Dict[str, Any], trial_config: Dict[str, Any], genotype_json: str,
                       trial_id: str) -> Dict[str, float]:
    """``proxy_retrain`` of a data-parallel search trial, run as a Ray task holding one worker's
    resources (data_parallel_trial.run_with_worker_resources): rebuilds the trial's sweep, settings and
    data from the context instead of receiving them."""
    import json
    from ..search import Genotype
    from .data_prep import PreparedData, encoded_data
    from .search_trial import trial_device
    from .space import resolve_trial
    from .sweep import validate_sweep_dict

    torch.set_num_threads(max(1, int(context.get("threads", 1))))
    sweep = validate_sweep_dict(context["sweep"], source=context.get("sweep_source", "sweep"))
    settings = resolve_trial(sweep, dict(trial_config))
    data = encoded_data(PreparedData(**context["prepared"]), settings.data["vocab_size"],
                        settings.data["spm_model_type"], settings.data["max_len"])
    genotype = Genotype.from_dict(json.loads(genotype_json))
    return proxy_retrain(sweep, trial_config, genotype, data, trial_id, trial_device(sweep.resources.gpu))
