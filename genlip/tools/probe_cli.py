"""The ``genlip-analyze probe`` command: options, device choice and the one-line result per probe; the probes
themselves are :mod:`genlip.probe`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from genlip.probe import DEFAULTS, KINDS, run_probes


def add_probe_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of the probe command (``--model``, ``--data``, ``--kind``, ...)."""
    parser.add_argument("--model", required=True,
                        help="encoder or pretraining checkpoint directory, or a pretraining run directory")
    parser.add_argument("--data", required=True, help="image folder with train/<class>/* and val/<class>/*")
    parser.add_argument("--kind", choices=(*KINDS, "both"), default="linear", help="which probe(s) to train")
    parser.add_argument("--image-size", type=int, default=None,
                        help="square input size, a multiple of the patch size (default: the config's image_size)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs (default: {DEFAULTS['linear']['epochs']})")
    parser.add_argument("--lr", type=float, nargs="+", default=None,
                        help="AdamW learning rate; several values are swept on a held-out part of train "
                             f"(default: {DEFAULTS['linear']['lr']})")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="AdamW weight decay (default: 1e-4 linear, 0.05 attentive)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of probe training and extraction")
    parser.add_argument("--seed", type=int, default=0, help="seed of probe initialisation and data order")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="image decoding threads")
    parser.add_argument("--out", default=None, help="write the results as JSON here ({kind: result})")
    return parser


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def format_result(r: dict) -> str:
    skip = f", {r['skipped']['count']} skipped {r['skipped']['reasons']}" if r["skipped"]["count"] else ""
    return (f"{r['kind']} probe: top-1 {r['top1']:.2f}% (train {r['train_top1']:.2f}%, chance "
            f"{r['chance_top1']:.2f}%) on {r['num_val']} val / {r['num_train']} train images, "
            f"{r['num_classes']} classes, d={r['feature_dim']}, lr {r['lr']:g}{skip}")


def probe_from_args(args: argparse.Namespace) -> int:
    """Run the probes the parsed ``args`` ask for, print one line per kind, write ``--out``; returns 0."""
    kinds = list(KINDS) if args.kind == "both" else [args.kind]
    lr = args.lr if args.lr is None or len(args.lr) > 1 else args.lr[0]
    results = run_probes(args.model, args.data, kinds, image_size=args.image_size, epochs=args.epochs, lr=lr,
                         batch_size=args.batch_size, weight_decay=args.weight_decay, seed=args.seed,
                         device=_device(args.device), num_workers=args.num_workers)
    for kind in kinds:
        print(format_result(results[kind]), flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
    return 0
