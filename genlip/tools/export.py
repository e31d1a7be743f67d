"""``genlip-export``: take a GenLIP encoder elsewhere.

    genlip-export hf --model runs/stage2_tiny_cpu --out export/hf [--image-size 384]
    genlip-export timm --model runs/stage2_tiny_cpu --out export/timm

``hf``: a standalone transformers vision model (``GenLIPVisionModel`` config + encoder weights + a
``SiglipImageProcessor`` config). ``timm``: timm NaFlexViT weights and the arguments that rebuild the model
(gated attention and interleaved MRoPE, timm >= 1.0.31). Both are checked against our features by the tests.
"""

from __future__ import annotations

import argparse
import sys

from genlip.export_hf import export_hf
from genlip.export_timm import export_timm
from genlip.run.command import quiet_deepspeed_on_cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="genlip-export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hf", help="standalone Hugging Face vision model")
    h.add_argument("--model", required=True, help="a GenLIP checkpoint or run directory (its newest checkpoint)")
    h.add_argument("--out", required=True, help="the directory to write (from_pretrained loads it)")
    h.add_argument("--image-size", type=int, default=None, help="the processor's square size (default: config)")
    t = sub.add_parser("timm", help="timm NaFlexViT weights")
    t.add_argument("--model", required=True, help="a GenLIP checkpoint or an exported HF vision model directory")
    t.add_argument("--out", required=True, help="the directory to write (timm weights + config)")
    args = ap.parse_args(argv)
    quiet_deepspeed_on_cpu()
    try:
        if args.cmd == "hf":
            out = export_hf(args.model, args.out, args.image_size)
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
