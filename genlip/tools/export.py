"""``genlip-export``: take a GenLIP encoder elsewhere.

    genlip-export hf --model runs/stage2_tiny_cpu --out export/hf [--image-size 384]
    genlip-export timm --model runs/stage2_tiny_cpu --out export/timm
    genlip-export random --model runs/stage2_tiny_cpu --out encoders/random [--seed 0]

``hf``: a standalone transformers vision model (``GenLIPVisionModel`` config + encoder weights + a
``SiglipImageProcessor`` config). ``timm``: timm NaFlexViT weights and the arguments that rebuild the model
(gated attention and interleaved MRoPE, timm >= 1.0.31). Both are checked against our features by the tests.
``random``: an ``hf`` export of a randomly initialised encoder with the model's architecture and preprocessing, the
untrained baseline of a comparison (``model.vision`` / a sweep's encoder). Each writes a model card, ``README.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers.utils import logging as hf_logging

from genlip.export_hf import export_hf, export_random
from genlip.export_timm import export_timm
from genlip.run.command import quiet_deepspeed_on_cpu
from genlip.run.dirs import output_dir_problem
from genlip.run.extras import why_missing
from genlip.run.parser import Parser

# what each export writes: an --out that holds anything else (or the other kind's export) is refused
WRITES = {"hf": {"config.json", "model.safetensors", "preprocessor_config.json", "generation_config.json",
                 "README.md"},
          "timm": {"config.json", "model.safetensors", "README.md"}}
WRITES["random"] = WRITES["hf"]  # an hf export with random weights (its card tells the two apart)


def out_problem(out: str, kind: str) -> str | None:
    """Why ``out`` cannot take a ``kind`` export (None: it is new, empty, or an earlier export of that kind, which
    is replaced)."""
    path = Path(out)
    if (problem := output_dir_problem(path, WRITES[kind])) is not None:
        return problem
    card = (path / "README.md").read_text(errors="replace") if (path / "README.md").is_file() else None
    if card is not None and "genlip-export" not in card:  # not the card an export wrote
        return f"{out} holds files this command did not write (README.md)"
    if (path / "config.json").is_file():  # an earlier export: of this kind?
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        if not (config.get("model_type") == "genlip" if kind in ("hf", "random") else "model_args" in config):
            return f"{out} holds another kind of export than {kind} (its config.json)"
        if card is not None and ("genlip-export random" in card) != (kind == "random"):  # trained vs random weights
            return f"{out} holds another kind of export than {kind} (its README.md)"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="genlip-export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hf", help="standalone Hugging Face vision model")
    h.add_argument("--model", required=True, help="a GenLIP checkpoint or run directory (its newest checkpoint)")
    h.add_argument("--out", required=True, help="the directory to write (from_pretrained loads it)")
    h.add_argument("--image-size", type=int, default=None, help="the processor's square size (default: config)")
    r = sub.add_parser("random", help="a randomly initialised encoder with a model's architecture (a baseline)")
    r.add_argument("--model", required=True, help="a GenLIP checkpoint or run directory: the architecture to take")
    r.add_argument("--out", required=True, help="the directory to write (an hf export with random weights)")
    r.add_argument("--seed", type=int, default=0, help="the initialisation's seed")
    t = sub.add_parser("timm", help="timm NaFlexViT weights")
    t.add_argument("--model", required=True, help="a GenLIP checkpoint or an exported HF vision model directory")
    t.add_argument("--out", required=True, help="the directory to write (timm weights + config)")
    args = ap.parse_args(argv)
    hf_logging.disable_progress_bar()  # transformers' loading / saving bars: noise between our lines
    if (problem := out_problem(args.out, args.cmd)) is not None:
        print(f"genlip-export: --out {problem}", file=sys.stderr)
        return 2
    if args.cmd == "timm" and (why := why_missing("tools")) is not None:
        print(f"genlip-export timm: {why}", file=sys.stderr)
        return 2
    quiet_deepspeed_on_cpu()
    try:
        if args.cmd == "hf":
            out = export_hf(args.model, args.out, args.image_size)
        elif args.cmd == "random":
            out = export_random(args.model, args.out, args.seed)
        else:
            out = export_timm(args.model, args.out)
    except ImportError as e:  # an optional package (timm) missing: not the input's fault
        print(f"genlip-export: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, KeyError) as e:  # a model or option that cannot be exported
        print(f"genlip-export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
