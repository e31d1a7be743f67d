"""From a recipe to the data pipeline's parts: sources (generating the embedded corpus on first use), the
tokenizer, and the stage's example builder."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer

from genlip.config import PRESETS, GenLIPConfig
from genlip.data.builders import FixedResBuilder, NativeResBuilder
from genlip.data.sequence import CaptionEncoder
from genlip.data.sources import DataError, SourceSpec, check_parquet_fields, expand_paths
from genlip.data.synth import write_corpus
from genlip.data.tokenizer import TOKENIZER_FILES, has_tokenizer
from genlip.run import dist as D
from genlip.run.checkpoint import resolve_weights_dir
from genlip.run.config import RecipeError
from genlip.run.dirs import generated_dir
from genlip.train.recipe import Recipe


def ensure_synth_corpus(spec: dict) -> Path:
    """The recipe's generated pretraining corpus (WebDataset shards + tokenizer), made on first use."""
    unknown = set(spec) - {"dir", "samples", "seed", "shard_size", "vocab"}
    if unknown:
        raise DataError(f"unknown data.synth keys {sorted(unknown)}; use dir, samples, seed, shard_size, vocab")
    samples, seed = int(spec.get("samples", 2048)), int(spec.get("seed", 0))
    return generated_dir(str(spec.get("dir", "$GENLIP_HOME/synth-n{samples}-s{seed}")), samples, seed,
                         "corpus.json", lambda tmp: write_corpus(tmp, samples, seed=seed,
                                                                 shard_size=int(spec.get("shard_size", 256)),
                                                                 tokenizer_vocab=int(spec.get("vocab", 1024))),
                         "the embedded corpus")


def recipe_patch_size(recipe: Recipe) -> int:
    """The model's patch size: from the ``init_from`` checkpoint if any, else from the preset and overrides."""
    if recipe.model.init_from:
        try:
            weights = resolve_weights_dir(recipe.model.init_from)
        except FileNotFoundError as e:
            raise RecipeError(f"model.init_from: {e}{_placeholder(recipe.model.init_from)}") from None
        return GenLIPConfig.from_pretrained(weights).patch_size
    if recipe.model.preset is None:
        raise ValueError("model.preset is needed to train from scratch (or model.init_from to continue a run)")
    return int(recipe.model.overrides.get("patch_size", PRESETS[recipe.model.preset].get("patch_size", 16)))


def _placeholder(value: str) -> str:
    return " (the recipe's placeholder: set it to your own)" if "/path/to/" in value else ""


def build_stream_parts(recipe: Recipe):
    """``(sources, units, tokenizer, builder)`` for the recipe's stage; ``units[i]``: source i's files, expanded
    once (the data stream and its workers reuse the lists)."""
    data = recipe.data
    sources = list(data.sources)
    tok_dir = data.tokenizer
    if tok_dir != "auto" and not Path(tok_dir).exists():  # before generating a corpus
        raise RecipeError(f"data.tokenizer: directory {tok_dir!r} does not exist{_placeholder(tok_dir)}")
    if tok_dir != "auto" and not has_tokenizer(tok_dir):
        raise RecipeError(f"data.tokenizer: {tok_dir} is not a tokenizer directory (none of "
                          f"{', '.join(TOKENIZER_FILES)})")
    P = recipe_patch_size(recipe)  # model.init_from is read here: also before generating a corpus
    if data.synth is not None and (not sources or tok_dir == "auto"):  # not generated when nothing would use it
        corpus = ensure_synth_corpus(data.synth)
        if not sources:
            pattern = json.loads((corpus / "corpus.json").read_text())["pattern"]
            sources = [SourceSpec(path=str(corpus / pattern), type="wds", name="synth")]
        if tok_dir == "auto":
            tok_dir = str(corpus / "tokenizer")
            if data.sources:  # the user's data with the generated corpus' small tokenizer: say so, it is easy to miss
                D.print0(f"data.tokenizer=auto: the generated corpus' tokenizer ({tok_dir}, trained on its "
                         "captions only); set data.tokenizer for your own data")
    # the recipe's own mistakes (what a paper recipe leaves to fill in included): one line and exit code 2 before
    # anything is built, like a wrong key
    if tok_dir == "auto":
        raise RecipeError("data.tokenizer=auto needs data.synth; point data.tokenizer at a tokenizer directory "
                          "(e.g. a local copy of the Qwen3 tokenizer)")
    if not sources:
        raise RecipeError("no data: set data.sources (WebDataset, parquet or JSONL) or data.synth")
    units = []
    for i, spec in enumerate(sources):
        try:
            units.append(expand_paths(spec.path))
        except DataError as e:
            raise RecipeError(f"data.sources.{i}.path: {e}{_placeholder(str(spec.path))}") from None
        if spec.type == "parquet" and (problem := check_parquet_fields(spec, units[-1])) is not None:
            raise RecipeError(f"data.sources.{i}.{problem}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except Exception as e:  # a broken tokenizer file: transformers and tokenizers raise many kinds of error
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RecipeError(f"data.tokenizer: {tok_dir}: cannot be loaded ({type(e).__name__}: {why})") from None
    encoder = CaptionEncoder(tokenizer, data.prompt, data.max_caption_tokens)
    if data.native:
        builder = NativeResBuilder(encoder, patch_size=P, min_pixels=data.min_image_tokens * P * P,
                                   max_pixels=data.max_image_tokens * P * P, max_seq_len=data.max_seq_len,
                                   window=data.pack_window, min_fill=data.pack_min_fill)
    else:
        if data.image_size % P:
            raise ValueError(f"data.image_size {data.image_size} is not a multiple of the patch size {P}")
        builder = FixedResBuilder(encoder, data.image_size, [0.5] * 3, [0.5] * 3)
    return sources, units, tokenizer, builder
