"""``genlip-data``: data utilities. ``genlip-data synth --out DIR --samples N`` writes the generated corpus."""

from __future__ import annotations

import argparse
import sys

from genlip.data.synth import write_corpus
from genlip.data.synth_sft import write_sft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genlip-data")
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
    if args.cmd == "synth":
        out = write_corpus(args.out, args.samples, seed=args.seed, shard_size=args.shard_size,
                           tokenizer_vocab=args.vocab)
        print(f"wrote {args.samples} samples to {out}/shards and a tokenizer to {out}/tokenizer")
    elif args.cmd == "synth-sft":
        out = write_sft(args.out, args.samples, args.seed)
        print(f"wrote {out}/captions.json, {out}/instruct.json and {args.samples} images in {out}/images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
