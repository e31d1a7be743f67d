"""Generated offline benchmarks in lmms-eval's own task format, so the whole evaluation path (the real CLI, its
task definitions and metrics) runs offline: questions on generated documents scored by ANLS (DocVQA's task),
on generated bar charts by relaxed accuracy (ChartQA's task), and generated captions by CIDEr (COCO's task).

Each task file ``include``s a copy of lmms-eval's own task definition (made at generation time by
:func:`vendor_task`, so no path of the virtual environment is written down) and only points it at local parquet data.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import yaml
from datasets import Dataset, Features, Image, Sequence, Value

from eval.local_tasks import vendor_task
from genlip.data.synth import synth_sample

SYNTH_TASKS = ("genlip_synth_docvqa", "genlip_synth_chartqa", "genlip_synth_caption")


def _lmms_task_file(*parts: str) -> Path:
    import lmms_eval  # optional: the eval extra; importing it takes ~20 s

    p = Path(lmms_eval.__file__).parent / "tasks" / Path(*parts)
    if not p.exists():
        raise FileNotFoundError(f"lmms-eval has no {p}; this toolkit expects lmms-eval 0.7.x task files")
    return p


def _png(img) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _rows(kind: str, n: int, seed: int):
    i = 0
    while n > 0:
        img, caption, meta = synth_sample(i, seed)
        i += 1
        if kind == "docvqa" and meta["kind"] == "document":
            yield {"questionId": str(i), "question": "What is the title of the document?",
                   "answers": [meta["title"], meta["title"].lower()], "image": _png(img)}
        elif kind == "chartqa" and meta["kind"] == "chart":
            k = i % len(meta["labels"])
            yield {"question": f"What is the value of bar {meta['labels'][k]}?", "answer": str(meta["values"][k]),
                   "type": "human_test", "image": _png(img)}
        elif kind == "caption":
            yield {"question_id": f"synth_{i:012d}.png", "id": i, "answer": [caption], "image": _png(img)}
        else:
            continue
        n -= 1


def write_synth_benchmarks(out: str | Path, samples: int = 50, seed: int = 1000) -> Path:
    """``out/data/*.parquet`` and ``out/tasks/*.yaml`` (pass ``--include_path out/tasks`` to lmms-eval)."""
    out = Path(out).resolve()  # the task files name their data by absolute path: lmms-eval runs elsewhere
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    feats = {
        "docvqa": Features({"questionId": Value("string"), "question": Value("string"),
                            "answers": Sequence(Value("string")), "image": Image()}),
        "chartqa": Features({"question": Value("string"), "answer": Value("string"), "type": Value("string"),
                             "image": Image()}),
        "caption": Features({"question_id": Value("string"), "id": Value("int64"),
                             "answer": Sequence(Value("string")), "image": Image()}),
    }
    tasks = {
        "docvqa": (_lmms_task_file("docvqa", "docvqa_val.yaml"), "validation",
                   [{"metric": "anls", "aggregation": "mean", "higher_is_better": True}]),
        "chartqa": (_lmms_task_file("chartqa", "chartqa.yaml"), "test", None),
        "caption": (_lmms_task_file("coco_cap", "coco2017_cap_val.yaml"), "val", None),
    }
    for kind, features in feats.items():
        rows = list(_rows(kind, samples, seed))
        data = out / "data" / f"synth_{kind}.parquet"
        Dataset.from_list(rows, features=features).to_parquet(str(data))
        include, split, metrics = tasks[kind]
        cfg = {"include": vendor_task(include, out / "tasks" / kind), "task": f"genlip_synth_{kind}",
               "dataset_path": "parquet",
               "dataset_name": None, "dataset_kwargs": {"data_files": {split: str(data)}}, "test_split": split}
        if metrics:
            cfg["metric_list"] = metrics
        text = yaml.safe_dump(cfg, sort_keys=False)
        if kind == "caption":  # CIDEr only (METEOR and SPICE need Java / the network), with COCO's own aggregation
            text += ("group: []\nmetric_list:\n  - metric: coco_CIDEr\n    aggregation: !function utils.coco_cider\n"
                     "    higher_is_better: true\n")
        (out / "tasks" / kind / f"genlip_synth_{kind}.yaml").write_text(text)
    (out / "synth_bench.json").write_text(json.dumps({"samples": samples, "seed": seed, "tasks": list(SYNTH_TASKS)}))
    return out
