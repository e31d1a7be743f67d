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

from genlip.resources import ResourceNotFound, bundled_names, resolve_recipe

DEFAULT_RECIPE = "stage1_tiny_cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genlip-pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=DEFAULT_RECIPE,
                        help="a recipe YAML path, or a bundled recipe: " + ", ".join(bundled_names("genlip"))
                        + " (default: %(default)s)")
    parser.add_argument("--resume", default=None, help="auto (default in recipes) | none | a checkpoint directory")
    parser.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=2e-4 train.steps=100")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("genlip.data").setLevel(logging.ERROR)  # skips are counted and reported, not spammed

    from transformers.utils import logging as hf_logging

    from genlip.train.recipe import RecipeError, load_recipe, to_dict

    hf_logging.disable_progress_bar()

    overrides = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])
    try:
        recipe = load_recipe(resolve_recipe(args.recipe), overrides)
    except (RecipeError, ResourceNotFound) as e:
        print(f"genlip-pretrain: bad recipe: {e}", file=sys.stderr)
        return 2
    if args.print_recipe:
        import yaml

        print(yaml.safe_dump(to_dict(recipe), sort_keys=False))
        return 0
    from genlip.data.sources import DataError
    from genlip.train import dist as D
    from genlip.train.loop import NonFiniteError, train

    try:
        train(recipe)
    except RecipeError as e:
        print(f"genlip-pretrain: bad recipe: {e}", file=sys.stderr)
        return 2
    except (DataError, NonFiniteError) as e:
        msg = str(e).strip().splitlines()[-1] if "Original Traceback" in str(e) else str(e)  # from a data worker
        print(f"genlip-pretrain: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
