"""``revsearch translate``: translate lines (stdin or --input) with a checkpoint that embeds its
SentencePiece model, or with a registered model (``--model models:/NAME@best``: weights, JSON spec and
SentencePiece model from the MLflow registry, nothing unpickled; see orchestration/registry.py).

Everything a user can get wrong is checked before the first sentence is decoded: the options, the
device, the output folder, that the input is UTF-8, and that no line is longer (in SentencePiece tokens,
end token included) than the model's ``max_len``. Such a line is refused, naming its number, rather than
truncated: a silently cut translation would pass for a complete one. Lines are then decoded ``--chunk``
at a time (sorted by length inside a chunk) and written as each chunk finishes; a progress bar and the
sentences/s go to stderr.
"""
from __future__ import annotations

import sys

from ..errors import ConfigError, DataError
from .arg_types import check_device, check_output_file, positive_int
from .train import add_decode_args, decode_config


def _stdin_lines():
    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"<stdin>: line {line_no}: invalid UTF-8 (byte 0x{raw[err.start]:02x})") from None
    return text.splitlines()


def _run(args) -> int:
    from ..data.corpus import read_lines
    from ..train.checkpoint import load_for_inference
    from ..train.decoding import model_max_len, translate_ids
    from .progress import Progress
    cfg = decode_config(args)
    cfg.max_tokens = args.max_tokens
    check_device(args.device)
    if args.output:
        check_output_file(args.output)
    if args.model:
        model, tokenizer = load_registered_model(args)
    else:
        if args.tracking_uri:
            raise ConfigError("--tracking-uri: only used with --model (a --checkpoint needs no MLflow)")
        model, tokenizer, _ = load_for_inference(args.checkpoint, device=args.device)
    source = args.input or "<stdin>"
    lines = read_lines(args.input) if args.input else _stdin_lines()
    encoded = [tokenizer.encode_src(line.strip()) if line.strip() else None for line in lines]
    limit = model_max_len(model)
    for number, ids in enumerate(encoded, 1):
        if limit and ids is not None and len(ids) > limit:
            raise DataError(f"{source}: line {number}: {len(ids)} tokens, longer than the model's max_len "
                            f"{limit}; split the line (long lines are refused, not truncated)")
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    progress = Progress(sum(ids is not None for ids in encoded))
    try:
        for start in range(0, len(lines), args.chunk):
            chunk = encoded[start:start + args.chunk]
            nonempty = [i for i, ids in enumerate(chunk) if ids is not None]
            hyps = translate_ids(model, [chunk[i] for i in nonempty], cfg, device=args.device,
                                 progress=progress.update)
            result = [""] * len(chunk)
            for i, ids in zip(nonempty, hyps):
                result[i] = tokenizer.decode(ids)
            out.write("".join(h + "\n" for h in result))
            out.flush()
    finally:
        if args.output:
            out.close()
    progress.close()
    return 0


def load_registered_model(args):
    """(model, Tokenizer) for ``--model models:/NAME@ALIAS`` from ``--tracking-uri`` (else
    ``$MLFLOW_TRACKING_URI``); problems are one line naming the option the value came from."""
    import os
    import tempfile
    from ..data.tokenizer import Tokenizer
    from ..orchestration.registry import load_registered, parse_model_uri
    try:
        parse_model_uri(args.model)
    except ConfigError as err:
        raise ConfigError(f"--model: {err}") from None
    uri, where = args.tracking_uri, "--tracking-uri"
    if not uri:
        uri, where = os.environ.get("MLFLOW_TRACKING_URI", ""), "$MLFLOW_TRACKING_URI"
    if not uri:
        raise ConfigError("--model: give --tracking-uri (e.g. sqlite:////abs/storage/mlflow.db, a sweep's "
                          "default store) or set $MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix="revsearch-registered-") as tmp:
        try:
            model, _, tokenizer_path = load_registered(args.model, uri, dst_path=tmp, device=args.device)
        except ConfigError as err:
            text = str(err)
            if text.startswith("tracking.uri"):
                raise ConfigError(text.replace("tracking.uri", where, 1)) from None
            raise ConfigError(f"--model: {text}") from None
        with open(tokenizer_path, "rb") as f:
            tokenizer = Tokenizer(f.read(), f"{args.model} ({os.path.basename(tokenizer_path)})")
    return model, tokenizer


def register(subparsers) -> None:
    p = subparsers.add_parser("translate", help="translate text with a trained checkpoint or a registered model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a checkpoint (.pt) with its SentencePiece model")
    which.add_argument("--model", metavar="models:/NAME@ALIAS",
                       help="a registered model, e.g. models:/revsearch-micro@best (or models:/NAME/VERSION)")
    p.add_argument("--tracking-uri", help="MLflow store of --model's registry (default $MLFLOW_TRACKING_URI); a "
                                          "sweep's default is sqlite:////<storage>/mlflow.db")
    p.add_argument("--input", help="file to translate, one sentence per line (default stdin)")
    p.add_argument("--output", help="write translations here (default stdout)")
    p.add_argument("--max-tokens", type=positive_int, default=4096,
                   help="source tokens per decoding batch (divided by the beam size)")
    p.add_argument("--chunk", type=positive_int, default=1000, help="lines decoded (and written) at a time")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_decode_args(p)
    p.set_defaults(handler=_run)
