"""The GPU benchmark runs on the CPU at toy sizes (``--smoke``): a GPU lease is 15 minutes, so a section that breaks
must be caught here, not on the device."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, *args: str) -> dict:
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--out", str(out),
                        *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((out / "bench_gpu.json").read_text())


def _errors(tree, path=""):
    if isinstance(tree, dict):
        return ([f"{path}: {tree['error']}"] if "error" in tree else []) + [
            e for k, v in tree.items() for e in _errors(v, f"{path}/{k}")]
    return []


def test_every_section_runs_in_priority_order_without_error(tmp_path):
    res = _run(tmp_path)
    assert not _errors(res), _errors(res)
    assert not [k for k, r in res.items() if r.get("partial")]  # every long section's final result replaced its parts
    names = list(res)
    assert names[:6] == ["env", "trainer", "stage1:b64:prefix", "stage2:L16:4x8192:issue_mix", "stage1:b256:prefix",
                         "mllm"], names
    assert names.index("variants") < names.index("trainer:compiled") < names.index("profile:stage2")
    tr = res["trainer"]  # genlip-pretrain itself: trains, says so when run again, bf16 parameters, stage 2
    assert all(r["rc"] == 0 for r in tr.values() if isinstance(r, dict)), tr
    assert tr["stage1_again"]["already_finished"] and not tr["stage1"]["already_finished"]
    assert all(0 < tr[k]["final_loss"] < 10 for k in ("stage1", "stage1_param_bf16", "stage2"))
    tc = res["trainer:compiled"]  # continues the first section's stage 1 (no stage-1 run of its own)
    assert set(tc) - {"section_s"} == {"stage2_compiled_checkpointed", "stage1_cudagraphs"}, tc
    assert all(tc[k]["rc"] == 0 and 0 < tc[k]["final_loss"] < 10 for k in set(tc) - {"section_s"}), tc
    assert {"variants", "profile", "profile:stage2", "stage1:b256:prefix", "blockmask", "eval",
            "stage2:So16:1x16384:ac_full"} <= set(names)
    for name in ("stage1:b64:prefix", "stage1:b256:prefix", "stage2:L16:4x8192:issue_mix"):
        assert res[name]["sec_per_step"] > 0 and res[name]["tflop_per_step"] > 0, name
    v = res["variants"]
    assert set(v) - {"section_s"} == {"base", "loss_eager", "dynamic_shapes", "trainer_step",
                                      "reduce_overhead_transformer", "compile_transformer", "param_bf16",
                                      "reduce_overhead", "segments", "eager"}
    # the chunked loss's compiled kernels (what CUDA runs) in every step but the variant without them
    assert {k: r["loss_kernels"] for k, r in v.items() if k != "section_s"} == {
        k: "eager" if k == "loss_eager" else "fused" for k in v if k != "section_s"}
    assert v["trainer_step"]["trainer_step"] and v["trainer_step"]["dynamic_shapes"]  # genlip-pretrain's step
    assert all(v[k]["vs_base"] > 0 for k in v if k not in ("base", "section_s"))
    assert res["mllm"]["chunked_vs_plain_loss_rel_diff"] < 1e-4
    for name in ("profile", "profile:stage2"):  # the step's reads back of device values, with their host time
        syncs = res[name]["host_syncs"]
        assert isinstance(syncs, dict) and all(set(v) == {"calls", "host_ms"} for v in syncs.values()), syncs


def test_only_selects_by_name_prefix_and_nothing_starts_after_the_deadline(tmp_path):
    res = _run(tmp_path, "--only", "env,stage1:b64,mllm", "--deadline", "0")
    # stage1:b64 names stage1:b64:prefix and stage1:b64:flex, not stage1:b256:prefix; all were past the deadline
    assert set(res) == {"env", "stage1:b64:prefix", "stage1:b64:flex", "mllm"}
    assert all(r.get("skipped") == "deadline" for r in res.values())


def _bench(monkeypatch):
    """The script as a module in smoke mode; what smoke mode sets in genlip (the fused loss) is undone after."""
    import importlib.util

    import genlip.loss

    monkeypatch.setattr(genlip.loss, "FUSED_CE", genlip.loss.FUSED_CE)
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.smoke_mode()
    return bench


def test_long_sections_stop_at_the_deadline_and_report_each_finished_part(tmp_path, monkeypatch):
    bench = _bench(monkeypatch)
    seen = []
    out = bench.variants(1.0, 2, None, deadline=-1.0, progress=lambda o: seen.append(dict(o)))
    assert len(out) == 10 and all(v == {"skipped": "deadline"} for v in out.values())
    assert [len(s) for s in seen] == list(range(1, 11))  # each part reported as it ends
    base = bench.stage1(1.0, 2, "prefix")
    out = bench.variants(1.0, 2, base, deadline=1e9)  # the base given is reused, not changed
    assert out["base"]["sec_per_step"] == base["sec_per_step"] and "vs_base" not in base
    assert all(out[k]["vs_base"] > 0 for k in out)
    res = bench.mllm(1.0, bench.mllm_parts(tmp_path), -1.0, 2, 64, progress=seen.append)
    configs = {k: v for k, v in res.items() if isinstance(v, dict)}
    assert len(configs) == 6 and all(v == {"skipped": "deadline"} for v in configs.values())
    # a hung training run is cut off and recorded; the next still runs; none starts after the deadline
    tr = bench.trainer(tmp_path / "hang", timeout=0.2)
    assert [r["rc"] for r in tr.values()] == ["timeout after 0.2 s"] * 4
    tr = bench.trainer(tmp_path / "hang", timeout=0.2, compiled=True)  # no stage 1 to continue: it runs one first
    assert list(tr) == ["stage1", "stage2_compiled_checkpointed", "stage1_cudagraphs"]
    assert bench.trainer(tmp_path / "late", compiled=True, deadline=-1.0) == {
        k: {"skipped": "deadline"} for k in ("stage1", "stage2_compiled_checkpointed", "stage1_cudagraphs")}


def test_batch_256_falls_back_to_checkpointing_where_it_does_not_fit(monkeypatch):
    """An 80 GB H100 may not hold the batch-256 step without checkpointing (76 GB on the H200): the section measures
    it with full checkpointing then, and says why, instead of losing the goal's figure; other errors are not
    taken for a lack of memory."""
    import pytest
    import torch

    bench = _bench(monkeypatch)
    real, calls = bench.stage1, []

    def tight(peak, batch, backend, checkpointing=False, **kw):
        calls.append(checkpointing)
        if not checkpointing:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(peak, batch, backend, checkpointing=checkpointing, **kw)

    bench.stage1 = tight
    res = bench.stage1_large(1.0, 2)
    assert calls == [False, True] and res["activation_checkpointing"] == "full" and res["sec_per_step"] > 0
    assert res["without_checkpointing"].startswith("OutOfMemoryError: CUDA out of memory")
    bench.stage1 = real
    assert "without_checkpointing" not in bench.stage1_large(1.0, 2)

    def broken(*a, **kw):
        raise RuntimeError("Expected query, key, and value to have the same dtype")

    bench.stage1 = broken
    with pytest.raises(RuntimeError, match="same dtype"):
        bench.stage1_large(1.0, 2)
