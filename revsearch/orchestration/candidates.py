"""Stage 2's candidates: the chosen genotypes turned into retrain configs, with the Transformer baseline
and random genotypes of the same space beside them, every model sized to one parameter count; and the
model a candidate config builds. Used by the pipeline, the proxy objective and ``revsearch retrain``
alike, so it imports none of them."""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional

from ..models.transformer import StandardTransformer
from ..search import Genotype, build_derived_model
from ..search.derive import derived_spec
from ..search.sizing import derived_model_config, transformer_config

# the data settings a search space may sample that change what a model is trained and scored on
DATA_KEYS = ("vocab_size", "spm_model_type", "max_len")
# the model settings outside the cell that a space may sample: the embedding and the regularisation.
# Shared like the data; the cell (genotype, splits, heads, pooling) stays each candidate's own
SHARED_MODEL_KEYS = ("embed_dim", "dropout", "tie_embeddings")


def retrain_candidates(sweep, chosen: List[Dict[str, Any]], partial: bool = False,
                       vocab_size_of: Optional[Callable[[int, str], int]] = None) -> List[Dict[str, Any]]:
    """Turn chosen genotypes into retrain trial configs, plus the Transformer baseline and
    ``retrain.random_genotypes`` random genotypes of the first one's space (the sampling baseline). With
    ``retrain.size.match: params`` every model's width is chosen so that all have the same parameter
    count (search/sizing.py); each candidate carries ``params`` (its exact count), ``target_params`` and
    ``param_deviation``. ``partial``: the configs are hand-made (``revsearch retrain``), not Tune trial
    configs. ``vocab_size_of(requested, spm_model_type)``: the vocabulary SentencePiece really gives
    (it may give fewer pieces than asked), so the counts are those of the trained models.

    Every candidate trains and is scored on one data setting (``vocab_size``, ``spm_model_type``,
    ``max_len``): the first (best-ranked) derived candidate's. A space that samples them would otherwise
    compare models trained on differently tokenised or length-filtered data. The same holds for the
    embedding width, its tying and the dropout (``SHARED_MODEL_KEYS``). Each derived candidate keeps its
    own search trial's values in ``search_data`` and ``search_model``, for the record."""
    from ..search import Genotype
    from ..search.sampling import sample_genotypes
    from ..search.sizing import (FFN_RATIO, baseline_heads, derived_param_count, size_derived,
                                 size_transformer, transformer_param_count)
    from .space import resolve_trial
    r = sweep.retrain
    out = []
    allow_zero = sweep.search.derive_allow_zero
    for c in chosen:
        settings = resolve_trial(sweep, c["config"], partial=partial)
        s = settings.supernet
        model = {"hidden": r.hidden or s["hidden"], "splits": s["splits"], "embed_dim": s["embed_dim"],
                 "encoder_layers": r.encoder_layers, "decoder_layers": r.decoder_layers,
                 "heads": s["heads"], "pooling": s["pooling"],
                 "dropout": r.dropout if r.dropout is not None else s["dropout"],
                 "tie_embeddings": s["tie_embeddings"]}
        if model["hidden"] % model["splits"]:
            model["hidden"] -= model["hidden"] % model["splits"]
        if not out:   # the random genotypes are drawn as the first candidate's trial derives
            allow_zero = settings.search.derive_allow_zero
        out.append({"kind": "derived", "label": f"derived-{c['rank_in_search']}-{c['trial_id']}",
                    "genotype": c["genotype"], "genotype_key": c["genotype_key"],
                    "search_trial_id": c["trial_id"], "search_run_id": c["search_run_id"],
                    "search_seconds": c["search_seconds"], "model": model,
                    "search_data": {k: settings.data[k] for k in DATA_KEYS},
                    "search_model": {k: model[k] for k in SHARED_MODEL_KEYS}})
    if not out:
        return out
    first = out[0]
    m = first["model"]
    # one data setting for the whole comparison: the best-ranked trial's vocabulary and length filter
    data_keys = dict(first["search_data"])
    for c in out:
        c.update(data_keys)
        c["model"].update(first["search_model"])   # and one embedding and dropout
    template = Genotype.from_dict(json.loads(first["genotype"]), source=first["label"])
    randoms = sample_genotypes(template, r.random_genotypes, sweep.seed, allow_zero=allow_zero,
                               avoid=[c["genotype_key"] for c in out],
                               what=f"{sweep.source}: retrain.random_genotypes")
    for i, genotype in enumerate(randoms, 1):
        out.append({"kind": "random", "label": f"random-{i}", "genotype": genotype.to_json(),
                    "genotype_key": genotype.key(), "search_seconds": 0.0,
                    "model": dict(m, splits=genotype.splits, pooling=genotype.pooling), **data_keys})
    # the Transformer at the reference width (the first candidate's): also what sets the default target
    baseline = {"hidden": m["hidden"], "embed_dim": m["embed_dim"], "heads": baseline_heads(m["hidden"]),
                "encoder_layers": m["encoder_layers"], "decoder_layers": m["decoder_layers"],
                "dropout": m["dropout"], "ffn_dim": FFN_RATIO * m["hidden"]}
    if r.baseline:   # first in the grid: the baseline is the slowest model, so it overlaps the derived ones
        out.insert(0, {"kind": "baseline", "label": "transformer-baseline", "genotype": "",
                       "search_seconds": 0.0, "model": baseline, **data_keys})

    vocab = vocab_size_of or (lambda requested, model_type: requested)
    v = vocab(data_keys["vocab_size"], data_keys["spm_model_type"])   # the one vocabulary all are counted with
    size = r.size
    target = None
    if size["match"] == "params":
        target = size["params"] or transformer_param_count(baseline, v)
    for c in out:
        genotype = None if c["kind"] == "baseline" else Genotype.from_dict(json.loads(c["genotype"]),
                                                                           source=c["label"])
        if target is None:   # match: width, the models keep the reference width
            c.update(params=(transformer_param_count(c["model"], v) if genotype is None
                             else derived_param_count(genotype, c["model"], v)),
                     target_params=None, param_deviation=None)
            continue
        what = f"{sweep.source}: retrain.size"
        sized = (size_transformer(c["label"], c["model"], v, target, size["tolerance"], what) if genotype is None
                 else size_derived(c["label"], genotype, c["model"], v, target, size["tolerance"], what))
        c.update(model=sized.model, params=sized.params, target_params=target, param_deviation=sized.deviation)
    return out


def build_retrain_model(candidate: Dict[str, Any], vocab_size: int):
    """(model, spec) for a derived or random genotype or the Transformer baseline, built from the
    candidate's ``model`` dict exactly as ``search.sizing`` counted it (``ffn_dim`` absent: 4 × hidden)."""
    m = candidate["model"]
    if candidate["kind"] == "baseline":
        model = StandardTransformer(transformer_config(m, vocab_size))
        return model, model.spec()
    genotype = Genotype.from_dict(json.loads(candidate["genotype"]), source=candidate["label"])
    config = derived_model_config(m, vocab_size)
    return build_derived_model(genotype, config), derived_spec(genotype, config)
