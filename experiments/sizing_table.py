"""Equal-size retraining for a sweep's settings: the parameter target and every sized model's count.

For each reference width the sweep's space can give the best search trial (``splits`` x split width, or
``retrain.hidden``), builds the retrain candidates exactly as ``revsearch run`` does
(``retrain_candidates``) for a set of representative genotypes of that space (conv-only, attention-only,
identity-heavy, a mixed cell) plus ``--random`` random genotypes, and prints the target (the Transformer
baseline's count at that width, or ``retrain.size.params``), each model's chosen width / heads / FFN
width, its exact count and its deviation. Counting uses the requested vocabulary size (a run uses the
size SentencePiece really gives, a few pieces fewer at most).

    python experiments/sizing_table.py tune_configs/quickstart.yaml --json sizing_quickstart.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from revsearch.errors import ConfigError  # noqa: E402
from revsearch.orchestration import load_sweep  # noqa: E402
from revsearch.orchestration.candidates import retrain_candidates  # noqa: E402
from revsearch.search import Genotype  # noqa: E402


def representative(splits: int, layers: int, encoder, decoder):
    """Conv-only, attention-only, identity-heavy and mixed cells over the given candidate ops."""
    def cell(ops):
        return [[ops[(i + j) % len(ops)] for j in range(splits)] for i in range(layers)]

    def pick(candidates, wanted):
        return [op for op in wanted if op in candidates] or [candidates[0]]

    cells = {
        "conv-only": (pick(encoder, ["conv3"]), pick(decoder, ["conv3"])),
        "attention-only": (pick(encoder, ["self_attn"]), pick(decoder, ["self_attn"])),
        "identity-heavy": (pick(encoder, ["identity"]) * (splits - 1) + pick(encoder, ["conv3"]),
                           pick(decoder, ["identity"]) * (splits - 1) + pick(decoder, ["self_attn"])),
        "mixed": (pick(encoder, ["dynconv7", "self_attn", "glu", "conv3"]),
                  pick(decoder, ["self_attn", "cross_attn", "ffn", "dynconv7"])),
    }
    for name, (enc_ops, dec_ops) in cells.items():
        yield name, Genotype.from_dict({"schema_version": 1, "splits": splits, "pooling": "max",
                                        "encoder": {"candidates": list(encoder), "cell": cell(enc_ops)},
                                        "decoder": {"candidates": list(decoder), "cell": cell(dec_ops)}})


def trial_configs(sweep):
    """Hand-made trial parameters covering the space's split counts and widths (quickstart-style spaces
    with ``splits`` and ``per_split_width``; otherwise the fixed search settings)."""
    splits = sweep.space.get("splits")
    widths = sweep.space.get("per_split_width")
    split_values = splits.values if splits is not None and splits.type == "choice" else [sweep.search.splits]
    width_values = (list(range(widths.low, widths.high + 1, widths.step)) if widths is not None
                    else [sweep.search.hidden // sweep.search.splits])
    for s, w in itertools.product(split_values, width_values):
        yield {"splits": s, "per_split_width": w, "hidden": s * w}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="sweep YAML")
    parser.add_argument("--random", type=int, default=2, help="random genotypes per reference width")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    sweep = load_sweep(args.config)
    sweep.retrain.random_genotypes = args.random
    layers = sweep.search.cell_layers or sweep.search.encoder_layers
    encoder, decoder = sweep.op_names(sweep.search.op_set)
    rows = []
    start = time.perf_counter()
    print(f"{sweep.source}: retrain.size {sweep.retrain.size}, depth {sweep.retrain.encoder_layers}+"
          f"{sweep.retrain.decoder_layers}, embed {sweep.search.embed_dim}, vocab {sweep.data.vocab_size}")
    print(f"| reference | genotype | model | kind | hidden | heads | ffn | params | target | deviation |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for config in trial_configs(sweep):
        reference = f"splits {config['splits']} x {config['per_split_width']}"
        for name, genotype in representative(config["splits"], layers, encoder, decoder):
            chosen = [{"rank_in_search": 1, "trial_id": name, "config": dict(config, op_set=sweep.search.op_set),
                       "genotype": genotype.to_json(), "genotype_key": genotype.key(), "search_run_id": "",
                       "search_seconds": 0.0}]
            try:
                candidates = retrain_candidates(sweep, chosen, partial=True)
            except ConfigError as err:
                print(f"| {reference} | {name} | — | error | {err} |")
                rows.append({"reference": reference, "genotype": name, "error": str(err)})
                continue
            for c in candidates:
                if c["kind"] == "baseline" and name != "conv-only":
                    continue   # the same baseline for every genotype of this reference width
                if c["kind"] == "random" and name != "conv-only":
                    continue   # random genotypes depend on the seed only: shown once per width
                m = c["model"]
                deviation = c.get("param_deviation")
                row = {"reference": reference, "genotype": name, "label": c["label"], "kind": c["kind"],
                       "hidden": m["hidden"], "heads": m["heads"], "ffn_dim": m.get("ffn_dim"),
                       "params": c["params"], "target_params": c.get("target_params"), "deviation": deviation}
                rows.append(row)
                print(f"| {reference} | {name if c['kind'] == 'derived' else ''} | {c['label']} | {c['kind']} | "
                      f"{m['hidden']} | {m['heads']} | {m.get('ffn_dim') or ''} | {c['params']:,} | "
                      f"{c.get('target_params') or 0:,} | "
                      f"{'' if deviation is None else f'{100 * deviation:+.2f}%'} |")
    deviations = [abs(r["deviation"]) for r in rows if r.get("deviation") is not None]
    print(f"\n{len(rows)} models, largest |deviation| {100 * max(deviations or [0]):.2f}%, "
          f"{sum('error' in r for r in rows)} sizing errors, {time.perf_counter() - start:.1f}s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": sweep.source, "size": sweep.retrain.size, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
