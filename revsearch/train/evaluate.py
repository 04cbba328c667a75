"""Detokenized sacreBLEU and chrF of a model on a test set.

Hypotheses are SentencePiece-decoded text, references the raw test-set lines, so the numbers are the
standard sacreBLEU ones (13a tokenization, mixed case) and come with their signatures.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import List, Sequence, Tuple

from sacrebleu.metrics import BLEU, CHRF
from torch import nn

from ..errors import ConfigError, DataError
from .decoding import DecodeConfig, translate


@dataclass
class EvalConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    tokenize: str = "13a"         # sacreBLEU tokenizer (13a standard; "intl", "zh", "ja-mecab", ...)
    lowercase: bool = False
    limit: int = 0                # score only the first N pairs (0: all)


@dataclass
class EvalResult:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    bleu_detail: str              # e.g. "BLEU = 27.31 58.1/33.2/21.0/13.9 (BP = 1.000 ...)"
    sentences: int
    seconds: float                # decoding time (translation only, not scoring)
    hypotheses: List[str]

    @property
    def sentences_per_s(self) -> float:
        return self.sentences / max(self.seconds, 1e-9)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("hypotheses")
        d["sentences_per_s"] = self.sentences_per_s
        return d


def check_tokenizer(name: str, field: str = "tokenize") -> str:
    """``name`` if sacreBLEU knows the tokenizer; one ``ConfigError`` line listing the valid ones otherwise
    (sacreBLEU itself fails with a bare KeyError, after the whole test set has been translated)."""
    valid = list(getattr(BLEU, "TOKENIZERS", None) or [])
    if valid and name not in valid:
        raise ConfigError(f"{field}: unknown sacreBLEU tokenizer {name!r}; one of: {', '.join(valid)}")
    return name


def score(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a",
          lowercase: bool = False) -> Tuple[object, object, str, str]:
    """(BLEUScore, CHRFScore, BLEU signature, chrF signature) of detokenized text."""
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        raise DataError("nothing to score: the test set is empty")
    check_tokenizer(tokenize)
    bleu = BLEU(tokenize=tokenize, lowercase=lowercase)
    chrf = CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return b, c, str(bleu.get_signature()), str(chrf.get_signature())


def evaluate_model(model: nn.Module, tokenizer, pairs: Sequence[Tuple[str, str]], config: EvalConfig = None,
                   device="cpu") -> EvalResult:
    """Translate the sources of ``pairs`` and score against their targets."""
    config = config or EvalConfig()
    if config.limit < 0:
        raise ConfigError(f"limit must be >= 0 (0: all pairs), got {config.limit}")
    if config.limit:
        pairs = pairs[: config.limit]
    t0 = time.perf_counter()
    hyps = translate(model, tokenizer, [s for s, _ in pairs], config.decode, device)
    seconds = time.perf_counter() - t0
    b, c, bsig, csig = score(hyps, [t for _, t in pairs], config.tokenize, config.lowercase)
    return EvalResult(bleu=b.score, chrf=c.score, bleu_signature=bsig, chrf_signature=csig,
                      bleu_detail=str(b), sentences=len(pairs), seconds=seconds, hypotheses=hyps)
