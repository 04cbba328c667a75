"""Sanity benchmark for the data / training / evaluation pipeline (CPU).

Default: train the standard Transformer baseline on the Tatoeba en->de corpus (``--data``, default
``/work/shared/data/tatoeba_anki_deu``; the script exits with a message when it is absent) under a fixed
training-time budget (``--minutes``, default 20) and report test BLEU / chrF with the sacreBLEU
signatures and training tokens/second. Target: >= 20 BLEU in 20 CPU minutes.

``--synthetic``: the embedded synthetic en->de pair (no files needed), scored for
  (a) a small Transformer and
  (b) a 1-layer convolution-only seq2seq without attention (``ConvOnlySeq2Seq`` below),
each with the same budget (``--minutes`` per model, default 3). Target: (a) >= 60 BLEU, (b) clearly below,
showing the pair is learnable but needs attention for its reordering and long-distance agreement.

    python experiments/baseline_sanity.py --minutes 20 --json tatoeba.json
    python experiments/baseline_sanity.py --synthetic --minutes 3 --json synthetic.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Contended CPUs: idle OpenMP threads that spin make 2-thread training several times slower than 1
# thread on a busy machine; passive waiting avoids that. Must be set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from revsearch.data.batching import encode_pairs  # noqa: E402
from revsearch.data.corpus import CorpusConfig, load_corpus  # noqa: E402
from revsearch.data.synthetic import SyntheticConfig, write_synthetic  # noqa: E402
from revsearch.data.tokenizer import SentencePieceConfig, train_tokenizer  # noqa: E402
from revsearch.errors import RevsearchError  # noqa: E402
from revsearch.models.transformer import FactorizedEmbedding, count_parameters  # noqa: E402
from revsearch.train.baseline import BaselineConfig, run_baseline  # noqa: E402
from revsearch.train.decoding import DecodeConfig  # noqa: E402
from revsearch.train.evaluate import EvalConfig, evaluate_model  # noqa: E402
from revsearch.train.trainer import TrainConfig, Trainer  # noqa: E402

DEFAULT_DATA = "/work/shared/data/tatoeba_anki_deu"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ConvOnlySeq2Seq(nn.Module):
    """One convolution layer in the encoder, one causal convolution layer in the decoder, no attention.

    Without attention the decoder can only reach the source by position: target position t reads the
    encoder state at source position min(t, |src| - 1) (whose convolution covers a window of ``kernel``
    source tokens) plus the mean of all encoder states. Enough for a monotone, word-by-word mapping; not
    for verb-final reordering or agreement with a distant subject."""

    def __init__(self, vocab_size: int, embed_dim: int = 256, hidden: int = 256, kernel: int = 5,
                 dropout: float = 0.1):
        super().__init__()
        self.kernel = kernel
        self.src_embed = FactorizedEmbedding(vocab_size, embed_dim, hidden, dropout, 512)
        self.tgt_embed = FactorizedEmbedding(vocab_size, embed_dim, hidden, dropout, 512)
        self.tgt_embed.embed = self.src_embed.embed
        self.enc_conv = nn.Conv1d(hidden, 2 * hidden, kernel, padding=kernel // 2)
        self.dec_conv = nn.Conv1d(hidden, 2 * hidden, kernel)
        self.aligned = nn.Linear(hidden, hidden)
        self.pooled = nn.Linear(hidden, hidden)
        self.enc_norm, self.dec_norm = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(4 * hidden, hidden))
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, embed_dim, bias=False)
        self.out_bias = nn.Parameter(torch.zeros(vocab_size))

    def encode(self, src: Tensor):
        pad = src.eq(0)
        x = self.src_embed(src).masked_fill(pad.unsqueeze(-1), 0.0)
        h = nn.functional.glu(self.enc_conv(x.transpose(1, 2)), dim=1).transpose(1, 2)
        return self.enc_norm(x + self.dropout(h)).masked_fill(pad.unsqueeze(-1), 0.0), pad

    def decode(self, tgt_in: Tensor, memory: Tensor, src_pad_mask: Tensor) -> Tensor:
        y = self.tgt_embed(tgt_in)
        conv_in = nn.functional.pad(y.transpose(1, 2), (self.kernel - 1, 0))      # causal
        h = nn.functional.glu(self.dec_conv(conv_in), dim=1).transpose(1, 2)
        src_len = (~src_pad_mask).sum(1, keepdim=True)                             # [B, 1]
        pos = torch.arange(tgt_in.size(1), device=tgt_in.device).unsqueeze(0)
        idx = torch.minimum(pos, src_len - 1)                                      # [B, T]
        aligned = memory.gather(1, idx.unsqueeze(-1).expand(-1, -1, memory.size(-1)))
        pooled = memory.sum(1, keepdim=True) / src_len.unsqueeze(-1).clamp(min=1)
        z = self.dec_norm(y + self.dropout(h) + self.aligned(aligned) + self.pooled(pooled))
        z = z + self.dropout(self.ffn(z))
        return nn.functional.linear(self.out_proj(z), self.src_embed.embed.weight, self.out_bias)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, pad = self.encode(src)
        return self.decode(tgt_in, memory, pad)


def train_config(minutes: float, args, **kw) -> TrainConfig:
    base = dict(lr=args.lr, warmup_steps=args.warmup, max_tokens=args.max_tokens, max_steps=None,
                time_budget_s=minutes * 60, valid_every=args.valid_every, log_every=args.log_every,
                quiet=args.quiet, average_last=1, seed=args.seed)
    base.update(kw)
    return TrainConfig(**base)


def tatoeba(args) -> dict:
    data = Path(args.data)
    if not (data / "train.en").is_file():
        print(f"baseline_sanity: {data} not found (the Tatoeba en-de corpus); give --data DIR or use --synthetic",
              file=sys.stderr)
        sys.exit(0)
    cfg = BaselineConfig(
        corpus=CorpusConfig(dir=str(data), src_lang="en", tgt_lang="de"),
        out_dir=args.out,
        spm=SentencePieceConfig(vocab_size=args.vocab_size or 4000, cache_dir=args.cache_dir),
        model=dict(embed_dim=256, hidden=args.dim, encoder_layers=args.layers, decoder_layers=args.layers,
                   heads=4, ffn_dim=4 * args.dim, dropout=args.dropout),
        train=train_config(args.minutes, args, average_last=args.average_last,
                           save_dir=None, resume=False),
        eval=EvalConfig(decode=DecodeConfig(beam_size=args.beam)),
        threads=args.threads)
    out = run_baseline(cfg, log=log)
    out["benchmark"] = {"name": "tatoeba en->de standard Transformer", "minutes": args.minutes}
    return out


def synthetic(args) -> dict:
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="revsearch-synth-"))
    scfg = SyntheticConfig(train=args.train, valid=300, test=500, seed=args.seed + 1234)
    write_synthetic(work / "corpus", scfg)
    corpus = load_corpus(CorpusConfig(dir=str(work / "corpus")))
    tok = train_tokenizer(list(corpus.files["train"]),
                          SentencePieceConfig(vocab_size=args.vocab_size or 1000, cache_dir=args.cache_dir), log=log)
    train, valid = encode_pairs(tok, corpus.train), encode_pairs(tok, corpus.valid)
    from revsearch.models.transformer import StandardTransformer, TransformerConfig
    models = {
        "transformer_small": lambda: StandardTransformer(TransformerConfig(
            tok.vocab_size, embed_dim=args.dim, hidden=args.dim, encoder_layers=args.layers,
            decoder_layers=args.layers, heads=4, ffn_dim=2 * args.dim, dropout=args.dropout)),
        "conv_only_1layer": lambda: ConvOnlySeq2Seq(tok.vocab_size, embed_dim=args.dim, hidden=args.dim, kernel=5),
    }
    results = {"corpus": {"dir": str(work / "corpus"), "sizes": {k: len(v) for k, v in corpus.splits.items()},
                          "seed": scfg.seed}, "vocab_size": tok.vocab_size, "models": {}}
    for name, build in models.items():
        torch.manual_seed(args.seed)
        model = build()
        log(f"== {name}: {count_parameters(model) / 1e6:.2f}M parameters, {args.minutes} min")
        res = Trainer(model, train, valid, train_config(args.minutes, args, save_dir=None), log=log).train()
        ev = evaluate_model(model, tok, corpus.test, EvalConfig(decode=DecodeConfig(beam_size=args.beam)))
        log(f"{name}: {ev.bleu_detail}; chrF {ev.chrf:.2f}")
        results["models"][name] = {
            "parameters": count_parameters(model), "steps": res.steps, "train_seconds": res.elapsed_s,
            "tokens_per_s": res.tokens_per_s, "best_valid_nll": res.best_valid_nll,
            "eval": ev.summary(), "examples": [{"src": s, "ref": t, "hyp": h} for (s, t), h in
                                               list(zip(corpus.test, ev.hypotheses))[:5]]}
    results["benchmark"] = {"name": "synthetic en->de: small Transformer vs 1-layer conv-only",
                            "minutes_per_model": args.minutes}
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="Tatoeba corpus dir with {train,valid,test}.{en,de}")
    p.add_argument("--synthetic", action="store_true", help="benchmark the embedded synthetic pair instead")
    p.add_argument("--minutes", type=float, help="training budget (per model for --synthetic); default 20 / 3")
    p.add_argument("--train", type=int, default=20000, help="synthetic training pairs")
    p.add_argument("--dim", type=int, help="model width (default 256 Tatoeba / 128 synthetic)")
    p.add_argument("--layers", type=int, help="Transformer encoder/decoder layers (default 3 / 2)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--vocab-size", type=int, help="SentencePiece vocabulary (default 4000 / 1000)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--valid-every", type=int, default=200)
    p.add_argument("--average-last", type=int, default=1)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", help="keep the corpus / checkpoints / results here")
    p.add_argument("--cache-dir", help="SentencePiece cache")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.minutes is None:
        args.minutes = 3.0 if args.synthetic else 20.0
    args.dim = args.dim or (128 if args.synthetic else 256)
    args.layers = args.layers or (2 if args.synthetic else 3)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    try:
        out = synthetic(args) if args.synthetic else tatoeba(args)
    except RevsearchError as err:
        print(f"baseline_sanity: error: {err}", file=sys.stderr)
        return 2
    out["wall_seconds"] = time.time() - t0
    out["torch"] = torch.__version__
    out["threads"] = args.threads
    out["host_cpus"] = os.cpu_count()
    summary = ({k: {"bleu": v["eval"]["bleu"], "chrf": v["eval"]["chrf"], "tokens_per_s": v["tokens_per_s"]}
                for k, v in out["models"].items()} if args.synthetic else
               {"bleu": out["eval"]["bleu"], "chrf": out["eval"]["chrf"], "tokens_per_s": out["train"]["tokens_per_s"]})
    sig = (next(iter(out["models"].values()))["eval"]["bleu_signature"] if args.synthetic
           else out["eval"]["bleu_signature"])
    print(json.dumps(summary, indent=2))
    print(f"BLEU signature: {sig}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
