"""Is a BLEU difference real? sacreBLEU's own paired bootstrap resampling, over several seeds.

Each model is retrained with several seeds; a seed's hypotheses are paired with the other model's
hypotheses of the *same* seed, and the seeds' test sets are pooled into one corpus (the references
repeated once per seed). Bootstrap samples of that pooled corpus then vary both the sentences and which
seed's outputs are drawn, so the p-value reflects sentence-level and (part of the) seed-level variation.
The resampling itself is sacreBLEU's ``PairedTest(test_type="bs")`` (Koehn 2004), seeded by sacreBLEU
(``SACREBLEU_SEED``, default 12345), so the figures are reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from ..errors import DataError


@dataclass
class PairedComparison:
    baseline_bleu: float      # corpus BLEU of the pooled baseline hypotheses
    system_bleu: float        # corpus BLEU of the pooled system hypotheses
    delta: float              # system - baseline, on the pooled corpus
    p_value: float            # sacreBLEU's paired-bootstrap p-value (two-sided: |delta| as large by chance)
    seeds: int                # number of seeds paired
    samples: int              # bootstrap resamples
    signature: str


def paired_bootstrap(baseline: Mapping[int, Sequence[str]], system: Mapping[int, Sequence[str]],
                     references: Sequence[str], samples: int = 1000,
                     tokenize: str = "13a") -> Optional[PairedComparison]:
    """Compare two models' hypotheses (``{seed: hypotheses}``) on the same references; seeds present
    in both are paired. None when no seed is shared."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    seeds = sorted(set(baseline) & set(system))
    if not seeds:
        return None
    for name, hyps in (("baseline", baseline), ("system", system)):
        for seed in seeds:
            if len(hyps[seed]) != len(references):
                raise DataError(f"{name} seed {seed}: {len(hyps[seed])} hypotheses for "
                                f"{len(references)} references")
    pooled_refs = [r for _ in seeds for r in references]
    pooled_base = [h for seed in seeds for h in baseline[seed]]
    pooled_system = [h for seed in seeds for h in system[seed]]
    test = PairedTest([("baseline", pooled_base), ("system", pooled_system)],
                      {"BLEU": BLEU(tokenize=tokenize)}, [pooled_refs], test_type="bs", n_samples=samples)
    signatures, results = test()
    base, other = results["BLEU"]
    delta = float(other.score - base.score)
    # sacreBLEU counts resamples whose difference *exceeds* the observed one, so with no observed difference
    # and degenerate statistics (e.g. both systems scoring 0 everywhere) it returns its smallest p-value;
    # no difference is never evidence of one
    p_value = 1.0 if delta == 0.0 else float(other.p_value)
    return PairedComparison(baseline_bleu=float(base.score), system_bleu=float(other.score),
                            delta=delta, p_value=p_value,
                            seeds=len(seeds), samples=samples, signature=str(signatures["BLEU"]))
