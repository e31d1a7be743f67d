"""``genlip-pretrain``: train a GenLIP encoder from a recipe (both stages; stage 2 is just another recipe).

    genlip-pretrain                                   # the tiny CPU recipe on the embedded generated corpus
    genlip-pretrain --recipe stage1_So16 data.sources.0.path='/data/shards/{00000..09999}.tar'
    genlip-pretrain --recipe my_recipe.yaml           # a file of one's own
    torchrun --nproc_per_node 8 -m genlip.train.cli --recipe ... train.parallel=fsdp
"""

from __future__ import annotations

import argparse
import logging
import sys

from transformers.utils import logging as hf_logging

from genlip.data.sources import DataError
from genlip.run.command import execute, load_for_command, print_config, recipe_help, schema_keys
from genlip.run.parser import Parser
from genlip.train.loop import NonFiniteError, train
from genlip.train.recipe import Recipe

DEFAULT_RECIPE = "stage1_tiny_cpu"


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="genlip-pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="recipe keys (section.key=default):\n" + schema_keys(Recipe))
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help=recipe_help("genlip"))
    parser.add_argument("--resume", default=None, help="auto (default in recipes) | none | a checkpoint directory")
    parser.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=2e-4 train.steps=100")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("genlip.data").setLevel(logging.ERROR)  # skips are counted and reported, not spammed

    hf_logging.disable_progress_bar()

    overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
    recipe = load_for_command("genlip-pretrain", args.recipe, "genlip", overrides, Recipe)
    if args.print_recipe:
        print_config(recipe)
        return 0
    return execute("genlip-pretrain", train, recipe, (DataError, NonFiniteError))


if __name__ == "__main__":
    sys.exit(main())
