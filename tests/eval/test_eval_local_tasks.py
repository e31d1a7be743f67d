"""Task files for local exports of the real benchmarks: the three export layouts are found, GQA's second dataset
(images) is joined locally, groups are rewritten, and the real lmms-eval CLI runs lmms-eval's own DocVQA, ChartQA
and GQA tasks on the exported data through ``run_suite``."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval")

from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from eval import run as run_mod  # noqa: E402
from eval.cli import main as eval_main  # noqa: E402
from eval.local_tasks import join_images, read_manifest, write_local_tasks  # noqa: E402
from eval.report import per_sample_scores  # noqa: E402
from eval.suites import PAPER_14  # noqa: E402

N = 4


def _img(i: int) -> PILImage.Image:
    return PILImage.new("RGB", (40 + 4 * i, 32), (30 * i % 256, 200, 90))


def make_exports(root):
    """DocVQA as parquet, ChartQA via save_to_disk, GQA as a snapshot of its hub repo (two configs), MathVista
    (a group of three tasks on one dataset) as a snapshot."""
    ex = root / "exports"
    (ex / "docvqa_val").mkdir(parents=True)
    Dataset.from_list([{"questionId": str(i), "question": f"doc question {i}?", "answers": [f"word{i}"],
                        "image": _img(i)} for i in range(N)],
                      features=Features({"questionId": Value("string"), "question": Value("string"),
                                         "answers": Sequence(Value("string")), "image": Image()})
                      ).to_parquet(str(ex / "docvqa_val" / "validation-00000-of-00001.parquet"))
    DatasetDict({"test": Dataset.from_list([{"question": f"chart question {i}?", "answer": str(10 + i),
                                             "type": "human_test", "image": _img(i)} for i in range(N)])}
                ).save_to_disk(str(ex / "chartqa"))
    repo = ex / "lmms-lab" / "GQA"
    for cfg in ("testdev_balanced_instructions", "testdev_balanced_images"):
        (repo / cfg).mkdir(parents=True)
    Dataset.from_list([{"id": f"q{i}", "imageId": f"img{N - 1 - i}", "question": f"gqa question {i}?",
                        "answer": f"answer{i}", "fullAnswer": f"It is answer{i}."} for i in range(N)]
                      ).to_parquet(str(repo / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet"))
    Dataset.from_list([{"id": f"img{i}", "image": _img(i)} for i in range(N)]
                      ).to_parquet(str(repo / "testdev_balanced_images" / "testdev-00000-of-00001.parquet"))
    (repo / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: testdev_balanced_instructions\n  data_files:\n  - split: testdev\n"
        "    path: testdev_balanced_instructions/testdev-*\n"
        "- config_name: testdev_balanced_images\n  data_files:\n  - split: testdev\n"
        "    path: testdev_balanced_images/testdev-*\n---\n")
    (ex / "MathVista").mkdir()
    Dataset.from_list([{"pid": "1", "question": "q", "answer": "1"}]).to_parquet(str(ex / "MathVista" / "t.parquet"))
    return ex


def test_layouts_groups_and_missing(tmp_path):
    ex = make_exports(tmp_path)
    m = write_local_tasks(ex, tmp_path / "tasks", [b.task for b in PAPER_14] + ["mathvista_testmini"])
    fmt = {t: m["sources"][t]["format"] for t in m["sources"]}
    assert fmt["docvqa_val"] == "parquet" and fmt["chartqa"] == "save_to_disk" and fmt["gqa"] == "snapshot"
    assert m["sources"]["gqa"]["name"] == "testdev_balanced_instructions"
    assert m["joins"]["gqa"]["source"]["name"] == "testdev_balanced_images"
    assert m["tasks"]["mathvista_testmini"] == "mathvista_testmini_local"
    group = (tmp_path / "tasks" / "mathvista_testmini_local.yaml").read_text()
    assert "mathvista_testmini_cot_local" in group and "mathvista_testmini_format_local" in group
    # everything else of the paper's 14 is reported missing, with the repo it looked for
    assert set(m["missing"]) == {b.task for b in PAPER_14} - {"docvqa_val", "chartqa", "gqa"}
    assert "MME" in m["missing"]["mme"]
    # a GQA export without its images is refused with the place to put them
    import shutil

    shutil.copytree(ex / "lmms-lab" / "GQA" / "testdev_balanced_instructions", tmp_path / "ex2" / "gqa")
    m2 = write_local_tasks(tmp_path / "ex2", tmp_path / "tasks2", ["gqa"])
    assert "gqa" in m2["missing"] and "images" in m2["missing"]["gqa"]
    # the CLI: missing tasks -> exit 1 and a listing; unknown suite -> 2
    assert eval_main(["local-tasks", "--exports", str(ex), "--out", str(tmp_path / "t3"), "--suite", "paper14"]) == 1
    assert eval_main(["local-tasks", "--exports", str(ex), "--out", str(tmp_path / "t3"), "--suite", "nope"]) == 2
    assert eval_main(["local-tasks", "--exports", str(ex), "--out", str(tmp_path / "t3"),
                      "--tasks", "docvqa_val,chartqa"]) == 0
    assert read_manifest(tmp_path / "t3")["tasks"] == {"docvqa_val": "docvqa_val_local", "chartqa": "chartqa_local"}


def test_task_files_name_no_path_of_the_environment(tmp_path):
    """The generated files include copies of lmms-eval's definitions, not the installed package's files, so a moved
    or rebuilt virtual environment leaves them working."""
    import lmms_eval
    from lmms_eval.utils import load_yaml_config

    ex = make_exports(tmp_path)
    write_local_tasks(ex, tmp_path / "tasks", ["docvqa_val", "gqa"])
    env = str(Path(lmms_eval.__file__).parent)
    for f in (tmp_path / "tasks").rglob("*"):
        if f.is_file() and f.suffix != ".json":
            assert env not in f.read_text(), f
    cfg = load_yaml_config(str(tmp_path / "tasks" / "docvqa_val" / "docvqa_val_local.yaml"))
    assert cfg["task"] == "docvqa_val_local" and cfg["dataset_path"] == "parquet"
    assert "anls" in str(cfg["metric_list"])  # lmms-eval's own metric came through the vendored chain


def test_join_images_attaches_the_referenced_image(tmp_path):
    ex = make_exports(tmp_path)
    m = write_local_tasks(ex, tmp_path / "tasks", ["gqa"])
    docs = Dataset.from_list([{"imageId": "img2", "question": "a"}, {"imageId": "img0", "question": "b"}])
    out = join_images(docs, m["joins"]["gqa"]["source"], m["joins"]["gqa"]["join"])
    assert [im.size for im in out["image"]] == [_img(2).size, _img(0).size]
    bad = Dataset.from_list([{"imageId": "img99", "question": "a"}])
    with pytest.raises(KeyError, match="img99"):
        join_images(bad, m["joins"]["gqa"]["source"], m["joins"]["gqa"]["join"])


def test_real_cli_on_local_exports(tmp_path, monkeypatch):
    from mllm.build import build_mllm, save_mllm
    from tests.mllm_fixtures import make_llm, make_towers

    ex = make_exports(tmp_path)
    write_local_tasks(ex, tmp_path / "tasks", ["docvqa_val", "chartqa", "gqa"])
    towers, llm = make_towers(tmp_path), make_llm(tmp_path)
    torch.manual_seed(0)
    model, tok, spec = build_mllm(str(towers["genlip"]), str(llm), "resize", image_size=32)
    save_mllm(tmp_path / "model", model, tok, spec)
    for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                 "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(k, v)
    mini = tuple(b for b in PAPER_14 if b.task in ("docvqa_val", "chartqa", "gqa"))
    monkeypatch.setitem(run_mod.SUITES, "mini", mini)
    res = run_mod.run_suite(tmp_path / "model", "mini", tmp_path / "res", max_new_tokens=4,
                            tasks_dir=tmp_path / "tasks")
    assert set(res["benchmarks"]) == {"DocVQA", "ChartQA", "GQA"}
    assert res["tasks"]["gqa"] == "gqa_local"
    # the answers were scored against the exported data (lmms-eval's targets are our exported answers, per doc)
    samples = list((tmp_path / "res" / "raw").rglob("*samples_gqa_local.jsonl"))
    recs = [json.loads(line) for line in samples[0].read_text().splitlines()]
    assert sorted((r["doc_id"], r["target"]) for r in recs) == [(i, f"answer{i}") for i in range(N)]
    # the report reads per-sample scores under the local name
    assert len(per_sample_scores(res, "docvqa_val", "anls,none")) == N
    # a suite with a task that has no local export fails before lmms-eval starts
    with pytest.raises(run_mod.EvalError, match="no local task"):
        run_mod.run_suite(tmp_path / "model", "paper14", tmp_path / "res2", tasks_dir=tmp_path / "tasks")
    assert not (tmp_path / "res2" / "lmms_eval.log").exists()
