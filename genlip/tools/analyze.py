"""``genlip-analyze``: look inside a GenLIP encoder.

    genlip-analyze sink --model runs/gated --model runs/no_gate --images val/ --out sink/   # JSON + PNG
    genlip-analyze readout --model runs/stage2_tiny_cpu --image cat.png --top-k 5 --region 2 --out readout/
    genlip-analyze probe --model runs/stage2_tiny_cpu --data imagenet_small/ --kind both --out probe.json

``sink``: per layer, attention mass from generated text to the first token and to the image, and from the image to
the first token (genlip/analysis.py), for one or more checkpoints side by side. ``readout``: the LM head's top-k
tokens for every patch (or region), drawn on the image. ``probe``: linear / attentive probes on frozen features of an
image-folder dataset (``DATA/train/<class>/``, ``DATA/val/<class>/``), top-1 on val.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers.utils import logging as hf_logging

from genlip.analysis import SINK_KEYS, draw_readout, plot_sink, readout, sink_stats
from genlip.data.decode import SkipSample, SkipStats, decode_image
from genlip.run.extras import installed
from genlip.run.parser import Parser
from genlip.tools.common import image_input, iter_images, load_captioner, pick_device
from genlip.tools.probe_cli import add_probe_args, probe_from_args


def model_labels(paths: list[str]) -> list[str]:
    """A short label per model directory: its name (a run's name for its ``final`` / ``checkpoint-*``), with as many
    parent directories as it takes to tell it from the others (``a/step_00000100``, ``b/step_00000100``); the same
    directory given twice gets ``#2``."""
    def parts(path: str) -> list[str]:
        ps = list(Path(path).resolve().parts[1:]) or ["/"]
        if len(ps) > 1 and (ps[-1] == "final" or ps[-1].startswith("checkpoint")):
            ps.pop()
        return ps
    all_parts = [parts(p) for p in paths]
    labels = []
    for i, ps in enumerate(all_parts):
        n = 1
        while n < len(ps) and any(j != i and o[-n:] == ps[-n:] and o != ps for j, o in enumerate(all_parts)):
            n += 1
        label = "/".join(ps[-n:])
        twice = sum(o == ps for o in all_parts[:i])
        labels.append(f"{label}#{twice + 1}" if twice else label)
    return labels


def cmd_sink(args) -> int:
    device = pick_device(args.device)
    stats = SkipStats()
    pils = [img for _, (_, img) in zip(range(args.max_images), iter_images(args.images, stats))]
    if not pils:
        print(f"genlip-analyze: no readable images in {args.images} (skipped: {dict(stats.skipped)})",
              file=sys.stderr)
        return 2
    results = {}
    for path, label in zip(args.model, model_labels(args.model)):
        model, tok, src = load_captioner(path, device)
        xs = [image_input(img, model.config, args.size) for img in pils]
        res = sink_stats(model, tok, xs, args.prompt, args.max_new_tokens)
        res["checkpoint"] = str(src)
        results[label] = res
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sink.json").write_text(json.dumps({"images": len(pils), "skipped": dict(stats.skipped),
                                               "models": results}, indent=1))
    drawn = installed("matplotlib")  # the chart needs the tools extra; the numbers do not
    if drawn:
        plot_sink(results, out / "sink.png")
    else:  # an earlier run's chart would not show these numbers
        (out / "sink.png").unlink(missing_ok=True)
    width = max(len(n) for n in results)
    print(f"{'model':{width}s}  gate  " + "  ".join(f"{k:>15s}" for k in SINK_KEYS))
    for n, r in results.items():
        print(f"{n:{width}s}  {'on ' if r['gated_attention'] else 'off'}   "
              + "  ".join(f"{100 * r['mean'][k]:14.2f}%" for k in SINK_KEYS))
    print(f"wrote {out / 'sink.json'} and {out / 'sink.png'} ({len(pils)} images)" if drawn else
          f"wrote {out / 'sink.json'} ({len(pils)} images); no sink.png: matplotlib is not installed (pip install "
          "'genlip-toolkit[tools]')")
    return 0


def cmd_readout(args) -> int:
    model, tok, src = load_captioner(args.model, pick_device(args.device))
    try:
        pil = decode_image(Path(args.image).read_bytes())
    except (OSError, SkipSample) as e:
        print(f"genlip-analyze: cannot read {args.image}: {e}", file=sys.stderr)
        return 2
    x = image_input(pil, model.config, args.size)
    try:
        res = readout(model, tok, x, args.top_k, args.region)
    except ValueError as e:  # a --region larger than the grid
        print(f"genlip-analyze: --{e}", file=sys.stderr)
        return 2
    res |= {"image": str(args.image), "checkpoint": str(src)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    (out / f"{stem}_readout.json").write_text(json.dumps(res, indent=1, ensure_ascii=False))
    draw_readout(pil, res, out / f"{stem}_readout.png")
    for c in res["cells"][: args.print]:
        print(f"({c['row']},{c['col']}): " + ", ".join(f"{t!r} {p:.3g}" for t, p in zip(c["tokens"], c["probs"])))
    print(f"wrote {out / (stem + '_readout.json')} and .png (grid {res['grid'][0]}x{res['grid'][1]})")
    return 0


AT_LEAST = {"epochs": 1, "batch_size": 1, "max_images": 1, "max_new_tokens": 1, "top_k": 1, "region": 1, "print": 0,
            "num_workers": 0, "weight_decay": 0}


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="genlip-analyze", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sink", help="attention-sink analysis, one or more checkpoints side by side")
    s.add_argument("--model", action="append", required=True, help="checkpoint or run directory (repeatable)")
    s.add_argument("--images", nargs="+", required=True, help="image files, folders, .tar shards")
    s.add_argument("--out", required=True, help="directory for the JSON results and the plot")
    s.add_argument("--max-images", type=int, default=32, help="images analysed per model (default: %(default)s)")
    s.add_argument("--size", type=int, default=None, help="square size (default: native aspect ratio)")
    s.add_argument("--max-new-tokens", type=int, default=32, help="caption length per image (default: %(default)s)")
    s.add_argument("--prompt", default=None, help="default: the pretraining prompt")
    s.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (CUDA when available)")
    r = sub.add_parser("readout", help="LM-head top-k tokens per patch, drawn on the image")
    r.add_argument("--model", required=True, help="checkpoint or run directory")
    r.add_argument("--image", required=True, help="one image file")
    r.add_argument("--out", required=True, help="output path stem: writes .png and .json")
    r.add_argument("--top-k", type=int, default=5, help="tokens per cell (default: %(default)s)")
    r.add_argument("--region", type=int, default=1, help="average features over REGION x REGION patches")
    r.add_argument("--size", type=int, default=None, help="square size (default: native aspect ratio)")
    r.add_argument("--print", type=int, default=8, help="print this many cells")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (CUDA when available)")
    p = sub.add_parser("probe", help="linear / attentive probes on frozen features (image-folder dataset)")
    add_probe_args(p)
    args = ap.parse_args(argv)
    hf_logging.disable_progress_bar()  # transformers' loading / saving bars: noise between our lines
    for key, low in AT_LEAST.items():  # a probe of 0 epochs or a negative learning rate would run and mean nothing
        value = getattr(args, key, None)
        if value is not None and any(v < low for v in (value if isinstance(value, list) else [value])):
            ap.error(f"--{key.replace('_', '-')} must be at least {low}, got {value}")
    if any(v <= 0 for v in getattr(args, "lr", None) or []):
        ap.error(f"--lr must be above 0, got {args.lr}")
    try:
        if args.cmd == "sink":
            return cmd_sink(args)
        if args.cmd == "readout":
            return cmd_readout(args)
        return probe_from_args(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"genlip-analyze: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
