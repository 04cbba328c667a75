"""``revsearch data``: make corpus directories (synthetic default, WMT'14, any aligned files) and check
them."""
from __future__ import annotations

import sys


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _synthetic(args) -> int:
    from ..data.synthetic import SyntheticConfig, write_synthetic
    from .output_dir import ensure_output_dir
    cfg = SyntheticConfig(train=args.train, valid=args.valid, test=args.test, seed=args.seed,
                          min_words=args.min_words, max_words=args.max_words)
    ensure_output_dir(args.out)
    out = write_synthetic(args.out, cfg)
    print(f"wrote synthetic en->de corpus to {out}: train {cfg.train}, valid {cfg.valid}, test {cfg.test} "
          f"(seed {cfg.seed})")
    return 0


def _import(args) -> int:
    from ..data.importer import ImportConfig, import_corpus
    from ..data.wmt14 import CleanConfig
    cfg = ImportConfig(src=args.src, tgt=args.tgt, src_lang=args.src_lang, tgt_lang=args.tgt_lang,
                       valid_src=args.valid_src, valid_tgt=args.valid_tgt, test_src=args.test_src,
                       test_tgt=args.test_tgt, valid_size=args.valid_size, test_size=args.test_size,
                       seed=args.seed, clean=CleanConfig(max_words=args.max_words, dedupe=args.dedupe))
    from .output_dir import ensure_output_dir
    cfg.check_output(args.out)   # before ensure_output_dir creates anything
    ensure_output_dir(args.out)
    import_corpus(cfg, args.out, log=print)
    return 0


def _wmt14(args) -> int:
    from ..data.wmt14 import CleanConfig, prepare_wmt14
    prepare_wmt14(args.pair, args.out, raw_dir=args.raw, download_missing=not args.no_download,
                  clean=CleanConfig(max_words=args.max_words, limit=args.limit), log=_log)
    return 0


def _check(args) -> int:
    from ..data.corpus import SPLITS, CorpusConfig, load_corpus
    cfg = CorpusConfig(dir=args.corpus, src_lang=args.src_lang, tgt_lang=args.tgt_lang,
                       max_words=args.max_words)
    corpus = load_corpus(cfg, SPLITS)
    for split in SPLITS:
        pairs = corpus.splits[split]
        words = sum(len(s.split()) + len(t.split()) for s, t in pairs)
        print(f"{split:5s} {len(pairs):>9,d} pairs  {words / max(len(pairs), 1) / 2:5.1f} words/side  "
              f"{corpus.files[split][0]}")
    for msg in corpus.messages():
        print(msg)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="prepare and check parallel corpora",
                              description="Corpus directories hold {train,valid,test}.{SRC,TGT} and meta.json.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    s = sub.add_parser("synthetic", help="write the embedded synthetic en->de pair (no download)")
    s.add_argument("--out", required=True, help="output corpus directory")
    s.add_argument("--train", type=int, default=20000)
    s.add_argument("--valid", type=int, default=500)
    s.add_argument("--test", type=int, default=500)
    s.add_argument("--seed", type=int, default=1234)
    s.add_argument("--min-words", type=int, default=5)
    s.add_argument("--max-words", type=int, default=20)
    s.set_defaults(handler=_synthetic)

    i = sub.add_parser("import", help="make a corpus directory from any aligned text files")
    i.add_argument("--src", required=True, help="training source file")
    i.add_argument("--tgt", required=True, help="training target file (line-aligned with --src)")
    i.add_argument("--src-lang", required=True)
    i.add_argument("--tgt-lang", required=True)
    i.add_argument("--out", required=True)
    for side in ("valid", "test"):
        i.add_argument(f"--{side}-src", help=f"{side} source file (default: held out of the training data)")
        i.add_argument(f"--{side}-tgt")
        i.add_argument(f"--{side}-size", type=int, default=1000, help=f"pairs held out for {side}")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--max-words", type=int, default=250, help="drop longer training pairs")
    i.add_argument("--dedupe", action="store_true", help="drop duplicate training pairs")
    i.set_defaults(handler=_import)

    w = sub.add_parser("wmt14", help="download and convert WMT'14 (newstest2013 valid, newstest2014 test)")
    w.add_argument("--pair", required=True, choices=["en-de", "en-fr", "en-cs"])
    w.add_argument("--out", required=True)
    w.add_argument("--raw", help="folder with the statmt.org archives (default OUT/raw)")
    w.add_argument("--no-download", action="store_true", help="use only archives already in --raw")
    w.add_argument("--max-words", type=int, default=250)
    w.add_argument("--limit", type=int, help="keep only the first N training pairs")
    w.set_defaults(handler=_wmt14)

    c = sub.add_parser("check", help="validate a corpus directory and print its sizes")
    c.add_argument("--corpus", required=True)
    c.add_argument("--src-lang")
    c.add_argument("--tgt-lang")
    c.add_argument("--max-words", type=int, default=250)
    c.set_defaults(handler=_check)
