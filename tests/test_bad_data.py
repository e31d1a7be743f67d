"""Bad data end to end through the console entry points: a generated corpus of every defect (``tests/badcorpus.py``)
trained on by ``genlip-pretrain`` (stages 1 and 2, WebDataset and parquet) and ``genlip-mllm finetune`` (LLaVA
JSONL); the skips each run reports, by reason, equal the generator's manifest, and too many bad records stop a run
with one line."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.badcorpus import write_llava_corpus, write_parquet_corpus, write_wds_corpus

RECIPES = Path(__file__).parent / "recipes"


def _env(home):
    return {**os.environ, "GENLIP_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _recipe(tmp: Path, base: str, name: str, **data) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"base": str(RECIPES / base), "name": name, "data": data}))
    return p


def _pretrain(home, recipe: Path, out: Path, *overrides, check=True):
    cmd = [sys.executable, "-m", "genlip.train.cli", "--recipe", str(recipe), f"train.output_dir={out}", *overrides]
    p = subprocess.run(cmd, env=_env(home), capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def _skips(run: Path, step: int) -> dict:
    state = json.loads((run / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())
    return state["skips"]["skipped"], state["samples"], state["skips"]["used"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("genlip_home")


@pytest.fixture(scope="module")
def wds(tmp_path_factory):
    return write_wds_corpus(tmp_path_factory.mktemp("bad_wds"))


def test_stage1_counts_every_bad_shard_record_once(home, wds, tmp_path):
    good = wds["good"]
    assert good % 4 == 0
    recipe = _recipe(tmp_path, "tiny_stage1.yaml", "bad-wds", sources=[{"path": wds["pattern"], "type": "wds"}],
                     max_skip_fraction=0.9, max_caption_tokens=64)
    p = _pretrain(home, recipe, tmp_path / "run", f"train.steps={good // 4}", "train.global_batch=4",
                  "train.micro_batch=4", f"checkpoint.every={good // 4}")
    # the recipe's data.tokenizer=auto takes the generated corpus' tokenizer for this data: said, not silent
    assert "data.tokenizer=auto: the generated corpus' tokenizer (" in p.stdout, p.stdout[-2000:]
    skipped, samples, used = _skips(tmp_path / "run", good // 4)
    assert samples == good
    assert skipped == wds["skipped"]
    assert used == wds["used"]  # where each caption came from, and the one caption cut to max_caption_tokens


def test_stage1_parquet_counts_bad_rows_and_a_cut_file(home, tmp_path):
    pq = write_parquet_corpus(tmp_path / "pq")
    good = pq["good"]
    recipe = _recipe(tmp_path, "tiny_stage1.yaml", "bad-pq",
                     sources=[{"path": pq["pattern"], "type": "parquet", "caption_fields": ["caption"]}],
                     max_skip_fraction=0.9, max_caption_tokens=64)
    _pretrain(home, recipe, tmp_path / "run", f"train.steps={good // 2}", "train.global_batch=2",
              "train.micro_batch=2", f"checkpoint.every={good // 2}")
    skipped, samples, used = _skips(tmp_path / "run", good // 2)
    assert samples == good
    assert skipped == pq["skipped"] and used == {"caption:caption": good}


def test_stage2_counts_every_bad_shard_record_once(home, wds, tmp_path):
    """Packing reads a window of ``pack_window`` samples: a window of exactly the usable records reads every shard
    once before the first row is trained on."""
    init = tmp_path / "init"
    _pretrain(home, RECIPES / "tiny_stage1.yaml", init, "train.steps=1", "checkpoint.every=1")
    recipe = _recipe(tmp_path, "tiny_stage2.yaml", "bad-wds2", sources=[{"path": wds["pattern"], "type": "wds"}],
                     max_skip_fraction=0.9, pack_window=wds["good"], pack_min_fill=0.0, max_caption_tokens=None)
    _pretrain(home, recipe, tmp_path / "run", f"model.init_from={init}", "train.steps=1", "train.global_batch=1",
              "train.micro_batch=1", "checkpoint.every=1")
    skipped, _, used = _skips(tmp_path / "run", 1)
    assert skipped == wds["skipped"] and used == wds["used"]


def test_a_mix_reports_its_skips_by_source(home, wds, tmp_path):
    """A clean source mixed with the bad corpus: the final line, the logged rows and the checkpoint say which source
    the skipped records came from, and the clean one has none."""
    from tests.datagen import write_wds

    write_wds(tmp_path / "clean.tar", range(100, 140))
    recipe = _recipe(tmp_path, "tiny_stage1.yaml", "bad-mix", max_skip_fraction=0.9, max_caption_tokens=64,
                     sources=[{"path": wds["pattern"], "type": "wds", "name": "bad"},
                              {"path": str(tmp_path / "clean.tar"), "type": "wds", "name": "clean"}])
    p = _pretrain(home, recipe, tmp_path / "run", "train.steps=4", "train.global_batch=4", "train.micro_batch=4",
                  "checkpoint.every=4", "log.every=2")
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000004" / "trainer_state.json").read_text())
    skips = state["skips"]
    bad, clean = skips["by_source"]["bad"], skips["by_source"]["clean"]
    assert set(clean) == {"seen"} and {k: v for k, v in bad.items() if k != "seen"} == skips["skipped"] != {}
    assert bad["seen"] + clean["seen"] == skips["seen"]
    done = [x for x in p.stdout.splitlines() if x.startswith("done:")]
    n_bad = sum(skips["skipped"].values())
    assert len(done) == 1 and f"(by source: bad: {n_bad} of {bad['seen']} read {{" in done[0], p.stdout[-2000:]
    assert f"clean: 0 of {clean['seen']} read)" in done[0]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["by_source"] == skips["by_source"]


def test_too_many_bad_records_stop_the_run_in_one_line(home, wds, tmp_path):
    recipe = _recipe(tmp_path, "tiny_stage1.yaml", "bad-stop", sources=[{"path": wds["pattern"], "type": "wds"}],
                     max_skip_fraction=0.2, skip_check_after=6)
    p = _pretrain(home, recipe, tmp_path / "run", "train.steps=4", check=False)
    assert p.returncode == 1
    err = [x for x in p.stderr.splitlines() if x.startswith("genlip-pretrain:")]
    assert len(err) == 1 and "max_skip_fraction" in err[0] and "shard-000.tar:" in err[0], p.stderr[-2000:]
    assert re.match(r"genlip-pretrain: DataError: \d+ of \d+ records skipped", err[0]), err[0]
    # the default check waits for 200 records, more than this corpus has: the same data trains
    p = _pretrain(home, recipe, tmp_path / "run2", "train.steps=4", "data.skip_check_after=200")
    assert "Traceback" not in p.stderr


def test_mllm_finetune_counts_every_bad_record_and_sample(tmp_path):
    from tests.mllm_fixtures import make_llm, make_towers

    corpus = write_llava_corpus(tmp_path / "llava")
    towers, llm = make_towers(tmp_path / "towers"), make_llm(tmp_path / "llm")
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "mllm.cli", "finetune", "--recipe", str(RECIPES / "mllm_finetune.yaml"),
           f"train.output_dir={out}", f"model.vision={towers['genlip']}", f"model.llm={llm}", "model.mode=resize",
           "model.image_size=32", "data.synth=null", f"data.path={corpus['path']}",
           f"data.image_root={corpus['image_root']}", "data.max_skip_fraction=0.9", "data.num_workers=1",
           "train.epochs=1", "train.max_steps=-1", "train.global_batch=4", "train.micro_batch=4"]
    p = subprocess.run(cmd, env=_env(tmp_path / "home"), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((out / "final" / "skipped.json").read_text()) == corpus["skipped"]
