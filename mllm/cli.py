"""``genlip-mllm``: train and use LLaVA-NeXT-style MLLMs.

    genlip-mllm pretrain                    # alignment (projector only), tiny CPU recipe on generated data
    genlip-mllm finetune                    # instruction tuning from the aligned model
    genlip-mllm pretrain --recipe pretrain_qwen2.5-1.5b model.vision=/ckpt/genlip-so16 model.llm=/models/qwen2.5
    torchrun --nproc_per_node 8 -m mllm.cli finetune --recipe ... train.deepspeed=zero3   # or a JSON path
    genlip-mllm chat --model runs/mllm_finetune_tiny_cpu/final --image x.png --prompt "What does the text say?"
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from genlip.run.extras import require

require("genlip-mllm", __name__, "mllm")  # before the imports that need it: one line, not a traceback

from transformers.utils import logging as hf_logging

from genlip.data.sources import DataError
from genlip.run.command import execute, load_for_command, print_config, recipe_help, schema_keys
from genlip.run.config import RecipeError
from genlip.run.parser import Parser
from mllm.build import load_mllm
from mllm.chat import ChatInputError, answer, load_image
from mllm.recipe import MllmRecipe
from mllm.train import check_packages, train, with_init_settings

DEFAULTS = {"pretrain": "pretrain_tiny_cpu", "finetune": "finetune_tiny_cpu"}


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="genlip-mllm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    sub = ap.add_subparsers(dest="cmd", required=True)
    for stage in ("pretrain", "finetune"):
        s = sub.add_parser(stage, help=f"{stage} an MLLM from a recipe")
        s.add_argument("--recipe", default=DEFAULTS[stage],
                       help=recipe_help("mllm"))
        s.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
        s.add_argument("--resume", default=None, help="auto | none | a checkpoint-N directory (= train.resume=...)")
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lr.vision_tower=2e-6 train.deepspeed=zero3")
        s.epilog = "recipe keys (section.key=default):\n" + schema_keys(MllmRecipe)
        s.formatter_class = argparse.RawDescriptionHelpFormatter
    c = sub.add_parser("chat", help="answer one question about one image")
    c.add_argument("--model", required=True, help="a trained MLLM directory (e.g. runs/mllm_finetune_tiny_cpu/final)")
    c.add_argument("--image", help="an image file (PNG, JPEG, WebP, ...); without it the question is text only")
    c.add_argument("--prompt", required=True, help="the question")
    c.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit (default: %(default)s)")
    c.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    c.add_argument("--temperature", type=float, default=None, help="with --sample (default: 0.7)")
    # overrides may come after options too: `finetune --recipe X a=1 --print-recipe b=2`
    args, extra = ap.parse_known_args(argv)
    hf_logging.disable_progress_bar()  # transformers' loading / saving bars: noise between our lines
    if extra and (args.cmd == "chat" or any("=" not in e or e.startswith("-") for e in extra)):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if getattr(args, "resume", None) is not None:  # as genlip-pretrain's --resume; after the overrides, so it wins
        args.overrides = [*args.overrides, f"train.resume={args.resume}"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "chat":
        if args.temperature is not None and not args.sample:
            print("genlip-mllm: --temperature only applies with --sample (the default is greedy decoding)",
                  file=sys.stderr)
            return 2
        args.temperature = 0.7 if args.temperature is None else args.temperature
        if args.max_new_tokens < 1 or (args.sample and args.temperature <= 0):
            bad = (f"--max-new-tokens must be at least 1, got {args.max_new_tokens}" if args.max_new_tokens < 1 else
                   f"--temperature must be above 0 with --sample, got {args.temperature}")
            print(f"genlip-mllm: {bad}", file=sys.stderr)
            return 2
        try:
            image = load_image(args.image) if args.image else None  # before the model: a bad path fails at once
            model, tok, spec, ip = load_mllm(args.model)
        except (ChatInputError, FileNotFoundError) as e:
            print(f"genlip-mllm: {e}", file=sys.stderr)
            return 2
        reply = answer(model, tok, spec, ip, image, args.prompt, args.max_new_tokens, args.sample, args.temperature)
        print(reply)
        if not reply.strip():
            print("genlip-mllm: the answer is empty (the model ended at once, as a barely trained one does)",
                  file=sys.stderr)
        return 0
    recipe = load_for_command("genlip-mllm", args.recipe, "mllm", args.overrides, MllmRecipe)
    if recipe.stage != args.cmd:
        print(f"genlip-mllm: the recipe is for stage {recipe.stage!r}, not {args.cmd!r}", file=sys.stderr)
        return 2
    if args.print_recipe:
        try:  # with model.init_from, the image settings the run takes from that model
            print_config(with_init_settings(recipe))
        except RecipeError as e:
            print(f"genlip-mllm: bad recipe: {e}", file=sys.stderr)
            return 2
        return 0
    try:  # DeepSpeed and report_to's packages: before the launcher is asked for
        check_packages(recipe)
    except RecipeError as e:
        print(f"genlip-mllm: bad recipe: {e}", file=sys.stderr)
        return 2
    if recipe.train.deepspeed and "WORLD_SIZE" not in os.environ:
        again = shlex.join([args.cmd, "--recipe", args.recipe, *args.overrides])
        print(f"genlip-mllm: train.deepspeed needs a distributed launcher; run "
              f"`torchrun --nproc_per_node <GPUs> -m mllm.cli {again}`", file=sys.stderr)
        return 2
    return execute("genlip-mllm", train, recipe, (DataError, ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
