"""A generated, offline image-caption corpus whose captions describe what is drawn, so a model can learn to read.

Kinds: rendered words and sentences, small documents, bar charts with numbers, coloured shapes. Written as
WebDataset shards in the img2dataset layout (``key.png`` + ``key.txt`` + ``key.json``), with a byte-level BPE
tokenizer trained on the captions. The same seed gives byte-identical shards.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from webdataset import TarWriter

from genlip.data.tokenizer import train_tokenizer

WORDS = (
    "apple", "river", "stone", "cloud", "green", "house", "paper", "light", "music", "water", "bread", "chair",
    "table", "window", "garden", "horse", "train", "summer", "winter", "orange", "purple", "silver", "market",
    "letter", "number", "camera", "pencil", "bottle", "basket", "candle", "rocket", "planet", "forest",
    "island", "bridge", "castle", "dragon", "flower", "guitar", "hammer", "jacket", "kettle", "ladder",
    "mirror", "needle", "pillow", "rabbit", "saddle", "ticket", "tunnel", "violin", "wallet", "yellow", "zebra",
    "anchor", "butter", "cactus", "doctor", "engine", "falcon", "ginger", "harbor", "insect", "jungle",
    "kitten", "lemon", "meadow", "nickel", "oyster", "parrot", "quartz", "ribbon", "salmon", "tomato",
    "umbrella", "velvet", "walnut",
)
COLORS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "black": (20, 20, 20),
          "orange": (240, 140, 20), "purple": (140, 60, 180), "gray": (128, 128, 128)}
BACKGROUNDS = {"white": (255, 255, 255), "light yellow": (250, 245, 200), "light blue": (215, 230, 250)}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six"]
KINDS = ("word", "sentence", "document", "chart", "shapes")


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _word_image(rng: random.Random):
    word = rng.choice(WORDS)
    color, bg = rng.choice(list(COLORS)), rng.choice(list(BACKGROUNDS))
    w, h = rng.choice([(128, 64), (160, 96), (192, 64), (128, 128)])
    img = Image.new("RGB", (w, h), BACKGROUNDS[bg])
    d = ImageDraw.Draw(img)
    font = _font(rng.randint(20, 30))
    box = d.textbbox((0, 0), word, font=font)
    x = max(0, (w - (box[2] - box[0])) // 2 + rng.randint(-8, 8))
    y = max(0, (h - (box[3] - box[1])) // 2 + rng.randint(-6, 6))
    d.text((x, y), word, fill=COLORS[color], font=font)
    return img, f'The word "{word}" written in {color} letters on a {bg} background.', {"text": word, "color": color,
                                                                                          "background": bg}


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _sentence_image(rng: random.Random):
    text = _sentence(rng, rng.randint(3, 5))
    img = Image.new("RGB", (rng.choice([256, 320]), rng.choice([48, 64])), (255, 255, 255))
    ImageDraw.Draw(img).text((6, 12), text, fill=(0, 0, 0), font=_font(18))
    return img, f'A line of black text that reads: "{text}".', {"text": text}


def _document_image(rng: random.Random):
    title = rng.choice(WORDS).capitalize()
    lines = [_sentence(rng, rng.randint(2, 4)) for _ in range(rng.randint(2, 4))]
    img = Image.new("RGB", (224, 64 + 24 * len(lines)), (252, 252, 248))
    d = ImageDraw.Draw(img)
    d.text((10, 8), title, fill=(0, 0, 0), font=_font(26))
    for i, line in enumerate(lines):
        d.text((10, 48 + 24 * i), line, fill=(40, 40, 40), font=_font(16))
    body = " ".join(f'"{line}"' for line in lines)
    return img, f'A document titled "{title}" with {len(lines)} lines of text: {body}.', {"title": title,
                                                                                         "lines": lines}


def _chart_image(rng: random.Random):
    n = rng.randint(3, 5)
    labels = [chr(ord("A") + i) for i in range(n)]
    values = [rng.randint(1, 9) for _ in range(n)]
    color = rng.choice(["blue", "green", "orange", "purple"])
    w, h = 40 * n + 40, 160
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = _font(14)
    for i, (lab, v) in enumerate(zip(labels, values)):
        x0, top = 30 + 40 * i, 130 - 12 * v
        d.rectangle([x0, top, x0 + 24, 130], fill=COLORS[color])
        d.text((x0 + 8, 134), lab, fill=(0, 0, 0), font=font)
        d.text((x0 + 8, top - 16), str(v), fill=(0, 0, 0), font=font)
    d.line([24, 130, w - 8, 130], fill=(0, 0, 0))
    parts = ", ".join(f"{lab} is {v}" for lab, v in zip(labels, values))
    best = labels[values.index(max(values))]
    caption = f"A {color} bar chart with {n} bars: {parts}. The tallest bar is {best}."
    return img, caption, {"labels": labels, "values": values, "color": color}


def _shapes_image(rng: random.Random):
    bg = rng.choice(list(BACKGROUNDS))
    img = Image.new("RGB", (rng.choice([128, 160, 192]), 128), BACKGROUNDS[bg])
    d = ImageDraw.Draw(img)
    groups = {}
    for _ in range(rng.randint(1, 2)):
        groups[(rng.choice(list(COLORS)), rng.choice(SHAPES))] = rng.randint(1, 3)
    cells = [(x, y) for x in range(0, img.width - 32, 36) for y in range(0, 96, 36)]
    rng.shuffle(cells)
    for (color, shape), count in groups.items():
        for _ in range(count):
            x, y = cells.pop()
            box = [x + 4, y + 4, x + 30, y + 30]
            if shape == "circle":
                d.ellipse(box, fill=COLORS[color])
            elif shape == "square":
                d.rectangle(box, fill=COLORS[color])
            else:
                d.polygon([(x + 17, y + 4), (x + 4, y + 30), (x + 30, y + 30)], fill=COLORS[color])
    desc = [f"{NUMBER_WORDS[c]} {col} {sh}{'s' if c > 1 else ''}" for (col, sh), c in groups.items()]
    return img, f"{' and '.join(desc).capitalize()} on a {bg} background.", {"groups": [list(k) + [v] for k, v
                                                                                         in groups.items()]}


_MAKERS = {"word": _word_image, "sentence": _sentence_image, "document": _document_image, "chart": _chart_image,
           "shapes": _shapes_image}


def synth_sample(index: int, seed: int = 0, kinds: tuple[str, ...] = KINDS):
    """``(image, caption, metadata)`` of sample ``index``: a pure function of ``(index, seed)``."""
    rng = random.Random(seed * 1_000_003 + index)
    kind = kinds[index % len(kinds)]
    img, caption, meta = _MAKERS[kind](rng)
    return img, caption, {"kind": kind, **meta}


def write_corpus(out: str | Path, samples: int, seed: int = 0, shard_size: int = 256,
                 tokenizer_vocab: int = 1024, kinds: tuple[str, ...] = KINDS) -> Path:
    """Write ``samples`` records as ``out/shards/{000000..}.tar`` plus ``out/tokenizer`` and ``out/corpus.json``."""
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    captions = []
    n_shards = (samples + shard_size - 1) // shard_size
    for s in range(n_shards):
        path = out / "shards" / f"{s:06d}.tar"
        with open(path, "wb") as f, TarWriter(f, mtime=0.0) as tw:
            for i in range(s * shard_size, min(samples, (s + 1) * shard_size)):
                img, caption, meta = synth_sample(i, seed, kinds)
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                tw.write({"__key__": f"{i:08d}", "png": buf.getvalue(), "txt": caption,
                          "json": json.dumps({"caption": caption, **meta}).encode()})
                captions.append(caption)
    train_tokenizer(captions, out / "tokenizer", vocab_size=tokenizer_vocab)
    info = {"samples": samples, "seed": seed, "shards": n_shards, "kinds": list(kinds),
            "pattern": f"shards/{{000000..{n_shards - 1:06d}}}.tar"}  # relative to the corpus directory
    (out / "corpus.json").write_text(json.dumps(info, indent=1))
    return out
