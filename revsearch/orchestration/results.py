"""From finished retrains to ranking rows: each (candidate, seed) result, the hypotheses and test
references the paired bootstrap compares, the per-model aggregates logged on the parent run, and the
genotype files written beside the ranking."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional

from .data_prep import PreparedData
from .ranking import RankRow, SeedResult, aggregate, summary
from .tracking import Tracker, no_artifact_progress_bar


def describe_candidates(candidates) -> Dict[str, Dict[str, Any]]:
    """label -> what the ranking shows about a candidate besides its scores."""
    from .trainables import describe_genotype
    described = {}
    for c in candidates:
        if c["kind"] == "baseline":
            m = c["model"]
            text = f"Transformer e={m['embed_dim']} d={m['hidden']}" + (f" ffn={m['ffn_dim']}" if m.get("ffn_dim") else "")
        else:
            text = describe_genotype(c["genotype"])
        described[c["label"]] = {"genotype": text, "search_trial": c.get("search_trial_id", ""),
                                 "search_seconds": float(c.get("search_seconds", 0.0))}
    return described


def seed_results(results, candidates) -> List[SeedResult]:
    """The scored (candidate, seed) retrains of stage 2's Tune results."""
    by_label = {c["label"]: c for c in candidates}
    out = []
    for result in results:
        m = result.metrics or {}
        config = result.config or {}
        label = m.get("label") or config.get("candidate", {}).get("label")
        if label not in by_label or "test_bleu" not in m or "valid_bleu" not in m:
            continue
        c = by_label[label]
        out.append(SeedResult(label=label, kind=c["kind"], seed=int(m.get("seed", config.get("seed", 0))),
                              valid_bleu=float(m["valid_bleu"]), test_bleu=float(m["test_bleu"]),
                              test_chrf=float(m["test_chrf"]), params=int(m["params"]),
                              target_params=int(m.get("target_params") or c.get("target_params") or 0),
                              train_seconds=float(m.get("train_seconds", 0.0)),
                              mlflow_run_id=m.get("mlflow_run_id", ""), bleu_signature=m.get("bleu_signature", "")))
    return out


def artifact_lines(tracker: Tracker, run_id: str, name: str) -> Optional[List[str]]:
    """The lines of a text artifact of a run (through the tracking server on a cluster); None when the
    run has no such file (an older run: only the significance test is dropped)."""
    import tempfile
    with tempfile.TemporaryDirectory() as directory:
        try:
            with no_artifact_progress_bar():   # one bar per file otherwise
                path = tracker.client.download_artifacts(run_id, name, directory)
        except Exception:  # noqa: BLE001 - a missing file only drops the significance test
            return None
        with open(path, encoding="utf-8") as f:
            text = f.read()
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def hypotheses_from_mlflow(tracker: Tracker, name: str = "test_hypotheses.txt"):
    """A reader of each retrain run's logged hypotheses."""
    def read(result: SeedResult) -> Optional[List[str]]:
        return artifact_lines(tracker, result.mlflow_run_id, name) if result.mlflow_run_id else None
    return read


def test_references(prepared: PreparedData, candidates) -> Optional[List[str]]:
    """The test references exactly as the retrains scored them."""
    from .data_prep import load_prepared_corpus
    if not candidates:
        return None
    corpus = load_prepared_corpus(prepared, candidates[0]["max_len"])
    return [t for _, t in corpus.test]


REFERENCES_FILE = "test_references.txt"   # on the parent run: what the paired tests compare against


def rows_from_results(results, candidates, tracker: Optional[Tracker] = None,
                      references: Optional[List[str]] = None) -> List[RankRow]:
    hypotheses = hypotheses_from_mlflow(tracker) if tracker is not None and references is not None else None
    return aggregate(seed_results(results, candidates), describe_candidates(candidates),
                     hypotheses=hypotheses, references=references)


def aggregate_metrics(rows: List[RankRow]) -> Dict[str, float]:
    """The parent run's view of stage 2: each candidate's mean/std over seeds, its comparison with the
    Transformer, and the verdict (best derived vs Transformer and vs random)."""
    metrics: Dict[str, float] = {"best_valid_bleu": rows[0].valid_bleu, "best_test_bleu": rows[0].test_bleu}
    for r in rows:
        for name in ("valid_bleu", "valid_bleu_std", "test_bleu", "test_bleu_std", "params",
                     "delta_vs_baseline", "p_value"):
            value = float(getattr(r, name))
            if not math.isnan(value):
                metrics[f"{r.label}.{name}"] = value
    metrics.update({k: v for k, v in summary(rows).items() if not math.isnan(v)})
    return metrics


def write_genotypes(candidates: List[Dict[str, Any]], run_dir: str) -> None:
    from ..search import Genotype
    directory = os.path.join(run_dir, "genotypes")
    os.makedirs(directory, exist_ok=True)
    for c in candidates:
        if c["kind"] != "baseline":  # derived and random genotypes
            c["genotype_file"] = os.path.join(directory, f"{c['label']}.json")
            Genotype.from_dict(json.loads(c["genotype"])).save(c["genotype_file"])
