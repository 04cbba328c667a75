"""End to end for the standard Transformer baseline: corpus -> SentencePiece -> train -> sacreBLEU.

Used by ``revsearch train-baseline`` and ``experiments/baseline_sanity.py``. The evaluated weights are
the average of the last k checkpoints when ``average_last > 1`` (and files are written), else the best
by validation NLL.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from ..data.batching import encode_pairs
from ..data.corpus import CorpusConfig, load_corpus
from ..data.tokenizer import SentencePieceConfig, train_tokenizer
from ..errors import ConfigError
from ..models.transformer import StandardTransformer, TransformerConfig, count_parameters
from .checkpoint import load_checkpoint, load_model_state
from .evaluate import EvalConfig, evaluate_model
from .trainer import TrainConfig, Trainer

MODEL_SIZES: Dict[str, dict] = {
    "tiny": dict(embed_dim=64, hidden=64, encoder_layers=2, decoder_layers=2, heads=4, ffn_dim=128),
    "small": dict(embed_dim=256, hidden=256, encoder_layers=3, decoder_layers=3, heads=4, ffn_dim=1024),
    "base": dict(embed_dim=256, hidden=512, encoder_layers=6, decoder_layers=6, heads=8, ffn_dim=2048),
}


def model_overrides(size: str, **overrides) -> dict:
    if size not in MODEL_SIZES:
        raise ConfigError(f"unknown model size {size!r}; expected one of {', '.join(MODEL_SIZES)}")
    return dict(MODEL_SIZES[size], **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class BaselineConfig:
    corpus: CorpusConfig
    out_dir: Optional[str] = None           # checkpoints and results.json; None: nothing written
    spm: SentencePieceConfig = field(default_factory=SentencePieceConfig)
    model: dict = field(default_factory=lambda: dict(MODEL_SIZES["small"]))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=10000))
    eval: EvalConfig = field(default_factory=EvalConfig)
    eval_split: str = "test"
    threads: Optional[int] = None


def run_baseline(cfg: BaselineConfig, log: Optional[Callable[[str], None]] = None,
                 on_report=None, on_step=None) -> dict:
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    corpus = load_corpus(cfg.corpus, splits=("train", "valid", cfg.eval_split))
    for msg in corpus.messages():
        log(msg)
    src_file, tgt_file = corpus.files["train"]
    tokenizer = train_tokenizer([src_file, tgt_file], cfg.spm, log=log)
    train = encode_pairs(tokenizer, corpus.train)
    valid = encode_pairs(tokenizer, corpus.valid)
    torch.manual_seed(cfg.train.seed)
    model = StandardTransformer(TransformerConfig(vocab_size=tokenizer.vocab_size, **cfg.model))
    n_params = count_parameters(model)
    log(f"corpus {corpus.src_lang}->{corpus.tgt_lang}: train {len(train)}, valid {len(valid)}, "
        f"{cfg.eval_split} {len(corpus.splits[cfg.eval_split])}; model {n_params / 1e6:.2f}M parameters")
    tcfg = cfg.train
    if cfg.out_dir:
        tcfg = TrainConfig(**dict(asdict(tcfg), save_dir=str(Path(cfg.out_dir) / "checkpoints")))
    trainer = Trainer(model, train, valid, tcfg, spm_model=tokenizer.model_proto, model_spec=model.spec(),
                      on_report=on_report, log=log, on_step=on_step)
    result = trainer.train()
    evaluated = "best"
    if "avg" in result.checkpoints:
        load_model_state(model, load_checkpoint(result.checkpoints["avg"])["model"], result.checkpoints["avg"])
        evaluated = "avg"
    model.eval()
    ev = evaluate_model(model, tokenizer, corpus.splits[cfg.eval_split], cfg.eval, device=tcfg.device)
    log(f"{cfg.eval_split}: {ev.bleu_detail}")
    log(f"{cfg.eval_split}: chrF2 = {ev.chrf:.2f}  (BLEU {ev.bleu_signature} | chrF {ev.chrf_signature})")
    out = {
        "corpus": {"src_lang": corpus.src_lang, "tgt_lang": corpus.tgt_lang,
                   "sizes": {k: len(v) for k, v in corpus.splits.items()}, "files": corpus.files},
        "vocab_size": tokenizer.vocab_size, "spm_model": tokenizer.path,
        "model": dict(cfg.model, parameters=n_params),
        "train": {"steps": result.steps, "epochs": result.epochs, "stop_reason": result.stop_reason,
                  "train_seconds": result.elapsed_s, "tokens_per_s": result.tokens_per_s,
                  "train_tokens": result.train_tokens, "best_valid_nll": result.best_valid_nll,
                  "best_step": result.best_step, "filtered_long": result.filtered_long,
                  "checkpoints": result.checkpoints},
        "eval": dict(ev.summary(), split=cfg.eval_split, weights=evaluated,
                     decode=asdict(cfg.eval.decode)),
        "total_seconds": time.perf_counter() - t_start,
        "torch_threads": torch.get_num_threads(),
    }
    if cfg.out_dir:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out_dir) / "results.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        (Path(cfg.out_dir) / f"{cfg.eval_split}.hyp").write_text(
            "".join(h + "\n" for h in ev.hypotheses), encoding="utf-8")
    return out
