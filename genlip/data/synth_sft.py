"""Offline SFT data for the harness: a caption set (alignment) and an instruction set (questions about the
generated images' text, numbers, colours and counts), in the LLaVA JSON format with an image folder.

Answers come from the drawing's own metadata, so they are right by construction.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from genlip.data.synth import NUMBER_WORDS, synth_sample


def questions(meta: dict, rng: random.Random) -> list[tuple[str, str]]:
    """Question-answer pairs about one generated image (at least one per kind)."""
    k = meta["kind"]
    if k == "word":
        return [("What word is written in the image?", meta["text"]),
                ("What color are the letters?", meta["color"])]
    if k == "sentence":
        return [("What does the text say?", meta["text"])]
    if k == "document":
        return [("What is the title of the document?", meta["title"]),
                ("How many lines of text are below the title?", str(len(meta["lines"])))]
    if k == "chart":
        i = rng.randrange(len(meta["labels"]))
        best = meta["labels"][meta["values"].index(max(meta["values"]))]
        return [(f"What is the value of bar {meta['labels'][i]}?", str(meta["values"][i])),
                ("Which bar is the tallest?", best)]
    color, shape, count = meta["groups"][0]
    return [(f"How many {color} {shape}s are there?", str(count)),
            (f"How many {shape}s of that colour? Answer in words: {color} {shape}", NUMBER_WORDS[count])]


def write_sft(out: str | Path, samples: int, seed: int = 0) -> Path:
    """``out/images/*.png``, ``out/captions.json`` (one caption turn per image) and ``out/instruct.json``
    (multi-turn questions)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    captions, instruct = [], []
    rng = random.Random(seed)
    for i in range(samples):
        img, caption, meta = synth_sample(i, seed)
        name = f"{i:06d}.png"
        img.save(out / "images" / name)
        captions.append({"id": f"cap-{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."}, {"from": "gpt", "value": caption}]})
        qa = questions(meta, rng)
        turns = []
        for j, (q, a) in enumerate(qa):
            turns += [{"from": "human", "value": ("<image>\n" if j == 0 else "") + q}, {"from": "gpt", "value": a}]
        instruct.append({"id": f"qa-{i}", "image": name, "conversations": turns})
    (out / "captions.json").write_text(json.dumps(captions, indent=0))
    (out / "instruct.json").write_text(json.dumps(instruct, indent=0))
    (out / "sft.json").write_text(json.dumps({"samples": samples, "seed": seed}))
    return out
