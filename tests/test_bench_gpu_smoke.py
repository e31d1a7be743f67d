"""The GPU benchmark runs on the CPU at toy sizes (``--smoke``): a GPU lease is 15 minutes, so a section that breaks
must be caught here, not on the device."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, *args: str) -> dict:
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--out", str(out), *args],
                   check=True, capture_output=True, text=True, timeout=600)
    return json.loads((out / "bench_gpu.json").read_text())


def _errors(tree, path=""):
    if isinstance(tree, dict):
        return ([f"{path}: {tree['error']}"] if "error" in tree else []) + [
            e for k, v in tree.items() for e in _errors(v, f"{path}/{k}")]
    return []


def test_every_section_runs_in_priority_order_without_error(tmp_path):
    res = _run(tmp_path)
    assert not _errors(res), _errors(res)
    names = list(res)
    assert names[:4] == ["env", "stage1:b64:prefix", "stage2:L16:4x8192:issue_mix", "mllm"], names
    assert {"variants", "profile", "profile:stage2", "stage1:b256:prefix", "blockmask", "eval",
            "stage2:So16:1x16384:ac_full"} <= set(names)
    for name in ("stage1:b64:prefix", "stage1:b256:prefix", "stage2:L16:4x8192:issue_mix"):
        assert res[name]["sec_per_step"] > 0 and res[name]["tflop_per_step"] > 0, name
    v = res["variants"]
    assert set(v) - {"section_s"} == {"base", "reduce_overhead_transformer", "compile_transformer", "param_bf16",
                                      "reduce_overhead", "segments", "eager"}
    assert all(v[k]["vs_base"] > 0 for k in v if k not in ("base", "section_s"))
    assert res["mllm"]["chunked_vs_plain_loss_rel_diff"] < 1e-4
    # the stage-1 step reads device values back (the attention plan's layout check, the supervised positions)
    assert res["profile"]["host_syncs"]["aten::_local_scalar_dense"]["calls"] > 0


def test_only_selects_by_name_prefix_and_nothing_starts_after_the_deadline(tmp_path):
    res = _run(tmp_path, "--only", "env,stage1:b64,mllm", "--deadline", "0")
    # stage1:b64 names stage1:b64:prefix and stage1:b64:flex, not stage1:b256:prefix; all were past the deadline
    assert set(res) == {"env", "stage1:b64:prefix", "stage1:b64:flex", "mllm"}
    assert all(r.get("skipped") == "deadline" for r in res.values())
