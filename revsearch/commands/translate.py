"""``revsearch translate``: translate lines (stdin or --input) with a checkpoint that embeds its
SentencePiece model."""
from __future__ import annotations

import sys

from ..errors import DataError
from .train import add_decode_args, decode_config


def _run(args) -> int:
    from ..data.corpus import read_lines
    from ..train.checkpoint import load_for_inference
    from ..train.decoding import translate
    model, tokenizer, _ = load_for_inference(args.checkpoint, device=args.device)
    if args.input:
        lines = read_lines(args.input)
    else:
        try:
            lines = sys.stdin.read().splitlines()
        except UnicodeDecodeError:
            raise DataError("<stdin>: input is not valid UTF-8") from None
    cfg = decode_config(args)
    cfg.max_tokens = args.max_tokens
    out = []
    for start in range(0, len(lines), args.chunk):
        chunk = lines[start:start + args.chunk]
        nonempty = [i for i, line in enumerate(chunk) if line.strip()]
        hyps = translate(model, tokenizer, [chunk[i] for i in nonempty], cfg, device=args.device)
        result = [""] * len(chunk)
        for i, h in zip(nonempty, hyps):
            result[i] = h
        out.extend(result)
        if not args.output:
            sys.stdout.write("".join(h + "\n" for h in result))
            sys.stdout.flush()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write("".join(h + "\n" for h in out))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("translate", help="translate text with a trained checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", help="file to translate, one sentence per line (default stdin)")
    p.add_argument("--output", help="write translations here (default stdout)")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=1000, help="lines decoded (and printed) at a time")
    p.add_argument("--device", default="cpu")
    add_decode_args(p)
    p.set_defaults(handler=_run)
