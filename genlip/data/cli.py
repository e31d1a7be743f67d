"""genlip-data: the generated data, written where you want it.

    genlip-data synth --out corpus --samples 4096          # WebDataset shards + a BPE tokenizer + corpus.json
    genlip-pretrain data.sources='[{type: wds, path: "corpus/shards/*.tar"}]' data.tokenizer=corpus/tokenizer
    genlip-data synth-sft --out sft --samples 512          # LLaVA caption and instruction sets with their images

Writing into a directory that holds an earlier corpus or SFT set replaces what the command wrote there (no stale
shard is left to be read; the new one is written beside and moved in); a directory that holds anything else is
refused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from genlip.data.synth import write_corpus
from genlip.data.synth_sft import write_sft
from genlip.run.dirs import output_dir_problem
from genlip.run.parser import Parser

# what each command writes into --out (and replaces there when it is run again)
OUTPUTS = {"synth": ("shards", "tokenizer", "corpus.json"),
           "synth-sft": ("images", "captions.json", "instruct.json", "sft.json")}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="genlip-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write a generated image-caption corpus as WebDataset shards + a tokenizer")
    s.add_argument("--out", required=True, help="the corpus directory to write (shards, tokenizer, corpus.json)")
    s.add_argument("--samples", type=int, default=2048, help="image-caption pairs (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="the generator's seed; same seed, same corpus")
    s.add_argument("--shard-size", type=int, default=256, help="samples per tar shard (default: %(default)s)")
    s.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary size of the trained tokenizer")
    t = sub.add_parser("synth-sft", help="write generated LLaVA caption and instruction sets with their images")
    t.add_argument("--out", required=True, help="directory for captions.json, instruct.json and images/")
    t.add_argument("--samples", type=int, default=512, help="generated images (default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="the generator's seed; same seed, same data")
    args = parser.parse_args(argv)
    small = [f"--{k.replace('_', '-')} must be at least {lo}, got {getattr(args, k)}"
             for k, lo in (("samples", 1), ("shard_size", 1), ("vocab", 300)) if getattr(args, k, lo) < lo]
    if small:
        print(f"genlip-data: {small[0]}", file=sys.stderr)
        return 2
    own = OUTPUTS[args.cmd]
    out = Path(args.out)
    if (problem := output_dir_problem(out, own)) is not None:
        print(f"genlip-data: {problem}: choose another --out", file=sys.stderr)
        return 2
    # written beside, then moved in: an interrupted run leaves the earlier output whole
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if args.cmd == "synth":
        write_corpus(tmp, args.samples, seed=args.seed, shard_size=args.shard_size, tokenizer_vocab=args.vocab)
    else:
        write_sft(tmp, args.samples, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    for name in own:  # an earlier output of this command is replaced whole: no stale shard is left to be read
        old = out / name
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    for p in tmp.iterdir():
        p.rename(out / p.name)
    tmp.rmdir()
    if args.cmd == "synth":
        print(f"wrote {args.samples} samples to {out}/shards and a tokenizer to {out}/tokenizer")
    else:
        print(f"wrote {out}/captions.json, {out}/instruct.json and {args.samples} images in {out}/images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
