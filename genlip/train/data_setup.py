"""From a recipe to the data pipeline's parts: sources (generating the embedded corpus on first use), the
tokenizer, and the stage's example builder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from genlip.data.builders import FixedResBuilder
from genlip.data.sequence import CaptionEncoder
from genlip.data.sources import DataError, SourceSpec
from genlip.train import dist as D
from genlip.train.recipe import Recipe


def genlip_home() -> Path:
    return Path(os.environ.get("GENLIP_HOME", Path.home() / ".cache" / "genlip"))


def generated_dir(template: str, samples: int, seed: int, marker: str, make, what: str) -> Path:
    """A generated-data directory made once: rank 0 writes it into ``<dir>.partial`` with ``make(tmp)`` and renames it
    into place (an interrupted generation never leaves a half corpus); every rank waits and returns the directory.
    ``template`` may use ``$GENLIP_HOME``, ``{samples}`` and ``{seed}``; ``marker`` is a file the finished
    directory holds, with the ``samples`` and ``seed`` it was made with."""
    import json

    raw = template.format(samples=samples, seed=seed)
    out = Path(os.path.expandvars(raw.replace("$GENLIP_HOME", str(genlip_home())))).expanduser()
    if D.is_main() and not (out / marker).exists():
        D.print0(f"generating {what} ({samples} samples) in {out} (first use only)")
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        make(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    D.barrier()
    if not (out / marker).exists():
        raise DataError(f"the generated data {out} is missing (rank 0 should have written it)")
    info = json.loads((out / marker).read_text())
    if (info["samples"], info["seed"]) != (samples, seed):
        raise DataError(f"{out} holds {info['samples']} samples (seed {info['seed']}), not {samples} (seed {seed}); "
                        f"use a dir with {{samples}} and {{seed}} in it")
    return out


def ensure_synth_corpus(spec: dict) -> Path:
    """The recipe's generated pretraining corpus (WebDataset shards + tokenizer), made on first use."""
    from genlip.data.synth import write_corpus

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
    from genlip.config import PRESETS, GenLIPConfig
    from genlip.train.checkpoint import resolve_weights_dir

    if recipe.model.init_from:
        return GenLIPConfig.from_pretrained(resolve_weights_dir(recipe.model.init_from)).patch_size
    if recipe.model.preset is None:
        raise ValueError("model.preset is needed to train from scratch (or model.init_from to continue a run)")
    return int(recipe.model.overrides.get("patch_size", PRESETS[recipe.model.preset].get("patch_size", 16)))


def build_stream_parts(recipe: Recipe):
    """``(sources, tokenizer, builder)`` for the recipe's stage."""
    from transformers import AutoTokenizer

    data = recipe.data
    sources = list(data.sources)
    tok_dir = data.tokenizer
    if data.synth is not None:
        corpus = ensure_synth_corpus(data.synth)
        if not sources:
            import json

            pattern = json.loads((corpus / "corpus.json").read_text())["pattern"]
            sources = [SourceSpec(path=str(corpus / pattern), type="wds", name="synth")]
        if tok_dir == "auto":
            tok_dir = str(corpus / "tokenizer")
    if tok_dir == "auto":
        raise DataError("data.tokenizer=auto needs data.synth; point data.tokenizer at a tokenizer directory "
                        "(e.g. a local copy of the Qwen3 tokenizer)")
    if not sources:
        raise DataError("no data: set data.sources (WebDataset, parquet or JSONL) or data.synth")
    if not Path(tok_dir).exists():
        raise DataError(f"tokenizer directory {tok_dir!r} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    encoder = CaptionEncoder(tokenizer, data.prompt, data.max_caption_tokens)
    if data.native:
        from genlip.data.builders import NativeResBuilder

        P = recipe_patch_size(recipe)
        builder = NativeResBuilder(encoder, patch_size=P, min_pixels=data.min_image_tokens * P * P,
                                   max_pixels=data.max_image_tokens * P * P, max_seq_len=data.max_seq_len,
                                   window=data.pack_window, min_fill=data.pack_min_fill)
    else:
        P = recipe_patch_size(recipe)
        if data.image_size % P:
            raise ValueError(f"data.image_size {data.image_size} is not a multiple of the patch size {P}")
        builder = FixedResBuilder(encoder, data.image_size, [0.5] * 3, [0.5] * 3)
    return sources, tokenizer, builder
