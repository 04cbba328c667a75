"""``revsearch train-baseline``: train the standard Transformer on a corpus directory and score it with
sacreBLEU (detokenized BLEU and chrF with their signatures)."""
from __future__ import annotations

import json


def add_decode_args(p) -> None:
    from .arg_types import finite_float, nonnegative_int, positive_float, positive_int
    p.add_argument("--beam", type=positive_int, default=4, help="beam size (1: greedy)")
    p.add_argument("--lenpen", type=finite_float, default=1.0, help="length penalty alpha")
    p.add_argument("--max-len-ratio", type=positive_float, default=1.5)
    p.add_argument("--max-len-extra", type=nonnegative_int, default=10)
    p.add_argument("--uncached", action="store_true",
                   help="re-run the whole prefix at every step (the slow reference path) instead of "
                        "incremental decoding; same outputs, up to float rounding on near-ties")


def decode_config(args):
    from ..train.decoding import DecodeConfig
    return DecodeConfig(beam_size=args.beam, length_penalty=args.lenpen, max_len_ratio=args.max_len_ratio,
                        max_len_extra=args.max_len_extra, cached=not args.uncached)


def _run(args) -> int:
    from ..data.corpus import CorpusConfig
    from ..data.tokenizer import SentencePieceConfig
    from ..train.baseline import BaselineConfig, model_overrides, run_baseline
    from ..train.evaluate import EvalConfig
    from ..train.trainer import TrainConfig
    from .output_dir import ensure_output_dir
    if args.out:  # before SentencePiece and training, not when the first checkpoint is written
        ensure_output_dir(args.out)
    model = model_overrides(args.size, hidden=args.hidden, embed_dim=args.embed_dim,
                            encoder_layers=args.layers, decoder_layers=args.layers, heads=args.heads,
                            ffn_dim=args.ffn_dim, dropout=args.dropout)
    train = TrainConfig(lr=args.lr, warmup_steps=args.warmup, max_tokens=args.max_tokens,
                        max_steps=args.max_steps, time_budget_s=args.minutes * 60 if args.minutes else None,
                        valid_every=args.valid_every, patience=args.patience, log_every=args.log_every,
                        quiet=args.quiet, average_last=args.average_last, resume=not args.no_resume,
                        seed=args.seed, device=args.device, label_smoothing=args.label_smoothing)
    cfg = BaselineConfig(
        corpus=CorpusConfig(dir=args.corpus, src_lang=args.src_lang, tgt_lang=args.tgt_lang),
        out_dir=args.out,
        spm=SentencePieceConfig(vocab_size=args.vocab_size, model_type=args.spm_type, cache_dir=args.cache_dir),
        model=model, train=train, eval=EvalConfig(decode=decode_config(args)), eval_split=args.split,
        threads=args.threads)
    from .progress import TrainingProgress
    bar = None if args.quiet else TrainingProgress("train", total_steps=args.max_steps,
                                                   budget_s=args.minutes * 60 if args.minutes else None)
    log = (lambda m: None) if bar is None else bar.log   # log lines land above the bar
    try:
        out = run_baseline(cfg, log=log, on_step=bar)
    finally:
        if bar is not None:
            bar.close()
    ev = out["eval"]
    print(f"{args.split} BLEU {ev['bleu']:.2f}  chrF {ev['chrf']:.2f}  ({out['train']['steps']} steps, "
          f"{out['train']['tokens_per_s']:,.0f} tok/s)")
    print(f"BLEU signature: {ev['bleu_signature']}")
    print(f"chrF signature: {ev['chrf_signature']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train-baseline", help="train and score the standard Transformer baseline")
    p.add_argument("--corpus", required=True, help="corpus directory ({train,valid,test}.{SRC,TGT})")
    p.add_argument("--out", help="directory for checkpoints, results.json and hypotheses")
    p.add_argument("--src-lang")
    p.add_argument("--tgt-lang")
    p.add_argument("--split", default="test", choices=["valid", "test"], help="split to score")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--spm-type", default="unigram", choices=["unigram", "bpe"])
    p.add_argument("--cache-dir", help="SentencePiece cache (default $REVSEARCH_CACHE or ~/.cache/revsearch)")
    p.add_argument("--size", default="small", help="tiny | small | base")
    p.add_argument("--hidden", type=int)
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--layers", type=int, help="encoder and decoder layers")
    p.add_argument("--heads", type=int)
    p.add_argument("--ffn-dim", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--minutes", type=float, help="training time budget")
    p.add_argument("--valid-every", type=int, default=1000)
    p.add_argument("--patience", type=int, default=0)
    p.add_argument("--average-last", type=int, default=1)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT has checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", help="write all results to this JSON file")
    add_decode_args(p)
    p.set_defaults(handler=_run)
