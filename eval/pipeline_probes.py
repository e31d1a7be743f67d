"""The pipeline's probes: reading tasks (which word, which bar is tallest) and perception tasks (letter colour,
shape, count) on generated images the encoders never saw, attentive and linear probes of each frozen encoder, with
bootstrap intervals and paired comparisons."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from eval.stats import bootstrap_ci, paired_bootstrap
from genlip.data.synth import WORDS, synth_sample
from genlip.probe import run_probes

# Probe tasks on generated images the encoders never saw (another seed): reading vs perception.
PROBE_WORDS = ("apple", "river", "candle", "garden", "rocket", "winter")
PROBE_CLASSES = {"Word": len(PROBE_WORDS), "Tallest bar": 5, "Letter colour": 7, "Shape": 3, "Count": 3}
PROBE_TASKS = {  # name -> (group, generator kind, class of a sample's metadata or None to skip the sample)
    "Word": ("reading", "word", lambda m: m["text"] if m["text"] in PROBE_WORDS else None),
    "Tallest bar": ("reading", "chart", lambda m: m["labels"][m["values"].index(max(m["values"]))]
                    if m["values"].count(max(m["values"])) == 1 else None),
    "Letter colour": ("perception", "word", lambda m: m["color"]),
    "Shape": ("perception", "shapes", lambda m: m["groups"][0][1] if len(m["groups"]) == 1 else None),
    "Count": ("perception", "shapes", lambda m: str(m["groups"][0][2]) if len(m["groups"]) == 1 else None),
}


def write_probe_tasks(out: Path, per_class: tuple[int, int] = (40, 20), seed: int = 4242) -> Path:
    """``out/<task>/{train,val}/<class>/*.png`` for every probe task (made once; a marker file says it is done)."""
    if (out / "done.json").exists():
        return out
    missing = [w for w in PROBE_WORDS if w not in WORDS]
    if missing:
        raise ValueError(f"probe words {missing} are not in the generator's vocabulary")
    need = sum(per_class)
    for name, (_, kind, label) in PROBE_TASKS.items():
        counts: dict[str, int] = {}
        for i in range(30_000):
            img, _, meta = synth_sample(i, seed, kinds=(kind,))
            c = label(meta)
            if c is None or counts.get(c, 0) >= need:
                continue
            split = "train" if counts.get(c, 0) < per_class[0] else "val"
            d = out / name.replace(" ", "_") / split / c
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / f"{i:06d}.png")
            counts[c] = counts.get(c, 0) + 1
            if len(counts) >= PROBE_CLASSES[name] and all(v >= need for v in counts.values()):
                break
        for c, v in counts.items():  # rare classes that did not fill up are dropped, so every task is balanced
            if v < need:
                for split in ("train", "val"):
                    shutil.rmtree(out / name.replace(" ", "_") / split / c, ignore_errors=True)
    (out / "done.json").write_text(json.dumps({"seed": seed, "per_class": per_class}))
    return out


def run_probe_suite(encoders: dict[str, Path], root: Path, image_size: int, resamples: int,
                    per_class: tuple[int, int] = (40, 20)) -> dict:
    """Attentive and linear probes of every encoder on every probe task; top-1 with intervals."""
    data = write_probe_tasks(root / "probe_data", tuple(per_class))
    out_file = root / "probes.json"
    res = json.loads(out_file.read_text()) if out_file.exists() else {}
    for enc, path in encoders.items():
        for task in PROBE_TASKS:
            key = f"{enc}/{task}"
            if key in res:
                continue
            r = run_probes(str(path), data / task.replace(" ", "_"), ("attentive", "linear"), image_size=image_size,
                           seed=0)
            res[key] = {k: {"top1": v["top1"], "correct": v["val_correct"], "chance": v["chance_top1"],
                            "ci": [100 * x for x in bootstrap_ci(v["val_correct"], resamples)]}
                        for k, v in r.items()}
            out_file.write_text(json.dumps(res))
    cmp = {}
    for other in encoders:
        if other == "genlip":
            continue
        for task in PROBE_TASKS:
            for kind in ("attentive", "linear"):
                d = paired_bootstrap(res[f"genlip/{task}"][kind]["correct"], res[f"{other}/{task}"][kind]["correct"],
                                     resamples)
                cmp[f"{other}/{task}/{kind}"] = {"diff": 100 * d.diff, "low": 100 * d.low, "high": 100 * d.high,
                                                 "significant": d.significant}
    return {"results": res, "compare": cmp}
