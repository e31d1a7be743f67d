"""``genlip-pretrain``: train a GenLIP encoder from a recipe (both stages; stage 2 is just another recipe).

    genlip-pretrain                                   # the tiny CPU recipe on the embedded generated corpus
    genlip-pretrain --recipe recipes/genlip/stage1_So16.yaml data.sources.0.path='/data/shards/{00000..09999}.tar'
    torchrun --nproc_per_node 8 -m genlip.train.cli --recipe ... train.parallel=fsdp
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_RECIPE = "stage1_tiny_cpu"


def recipes_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "recipes"


def resolve_recipe(name: str, kind: str = "genlip") -> Path:
    """A path, or a recipe name under ``recipes/<kind>`` (``stage1_tiny_cpu``, ``finetune_tiny_cpu``)."""
    p = Path(name)
    if p.exists():
        return p
    for cand in (recipes_dir() / kind / name, recipes_dir() / kind / f"{name}.yaml"):
        if cand.exists():
            return cand
    known = sorted(q.stem for q in (recipes_dir() / kind).glob("*.yaml"))
    raise SystemExit(f"recipe {name!r} not found (a path, or one of {known})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genlip-pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help="recipe YAML path or name (default: %(default)s)")
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
    except RecipeError as e:
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
    except (DataError, NonFiniteError) as e:
        msg = str(e).strip().splitlines()[-1] if "Original Traceback" in str(e) else str(e)  # from a data worker
        print(f"genlip-pretrain: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
