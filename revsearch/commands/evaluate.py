"""``revsearch evaluate``: detokenized sacreBLEU and chrF of a checkpoint on a corpus split, or of a
hypothesis file against a reference file."""
from __future__ import annotations

import json

from .arg_types import check_device, check_output_file, positive_int
from .train import add_decode_args, decode_config


def _run(args) -> int:
    from ..data.corpus import read_lines
    from ..errors import ConfigError
    from ..train.evaluate import EvalConfig, check_tokenizer, evaluate_model, score
    check_tokenizer(args.tokenize, "--tokenize")
    check_device(args.device)
    for option, path in (("--output", args.output), ("--json", args.json)):
        if path:
            check_output_file(path, option)
    if args.hyp or args.ref:
        if not (args.hyp and args.ref):
            raise ConfigError("give both --hyp and --ref to score files")
        b, c, bsig, csig = score(read_lines(args.hyp), read_lines(args.ref), args.tokenize)
        out = {"bleu": b.score, "chrf": c.score, "bleu_signature": bsig, "chrf_signature": csig,
               "bleu_detail": str(b), "sentences": len(read_lines(args.ref))}
    else:
        if not (args.checkpoint and args.corpus):
            raise ConfigError("give --checkpoint and --corpus (or --hyp and --ref)")
        from ..data.corpus import CorpusConfig, load_corpus
        from ..train.checkpoint import load_for_inference
        corpus = load_corpus(CorpusConfig(dir=args.corpus, src_lang=args.src_lang, tgt_lang=args.tgt_lang),
                             splits=(args.split,))
        model, tokenizer, _ = load_for_inference(args.checkpoint, device=args.device)
        res = evaluate_model(model, tokenizer, corpus.splits[args.split],
                             EvalConfig(decode=decode_config(args), tokenize=args.tokenize,
                                        limit=args.limit or 0),
                             device=args.device)
        out = res.summary()
        out.update(split=args.split, checkpoint=args.checkpoint)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write("".join(h + "\n" for h in res.hypotheses))
    print(out["bleu_detail"])
    print(f"chrF2 = {out['chrf']:.2f}")
    print(f"BLEU signature: {out['bleu_signature']}")
    print(f"chrF signature: {out['chrf_signature']}")
    if "seconds" in out:
        print(f"decoded {out['sentences']} sentences in {out['seconds']:.1f} s "
              f"({out['sentences_per_s']:.1f} sentences/s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="sacreBLEU and chrF of a checkpoint (or of hypothesis files)")
    p.add_argument("--checkpoint")
    p.add_argument("--corpus", help="corpus directory")
    p.add_argument("--src-lang")
    p.add_argument("--tgt-lang")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first N pairs")
    p.add_argument("--hyp", help="score this hypothesis file against --ref instead")
    p.add_argument("--ref")
    p.add_argument("--tokenize", default="13a", help="sacreBLEU tokenizer")
    p.add_argument("--output", help="write the hypotheses here")
    p.add_argument("--json", help="write the scores and signatures to this JSON file")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_decode_args(p)
    p.set_defaults(handler=_run)
