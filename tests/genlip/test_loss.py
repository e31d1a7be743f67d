"""Loss: supervised tokens only, normalised by their count; the memory-lean variant equals the plain one."""

import torch
import torch.nn.functional as F

from genlip.config import genlip_config
from genlip.loss import IGNORE_INDEX, supervised_ce
from genlip.modeling import GenLIPForCaptioning
from tests.dispatch import MatmulDtypes


def _problem(seed: int, rows: int, dim: int, vocab: int, scale: float):
    """Features ``(rows, dim)``, an LM-head weight ``(vocab, dim)`` and targets."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, dim, generator=g), torch.randn(vocab, dim, generator=g) * scale,
            torch.randint(0, vocab, (rows,), generator=g))


def test_chunked_equals_plain_loss_and_gradients():
    h, w, y = _problem(0, 37, 16, 301, 0.3)
    res = {}
    for impl in ("plain", "chunked"):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        loss = supervised_ce(hh, ww, y, impl, chunk_size=8)
        (loss * 0.7).backward()
        res[impl] = (loss.detach(), hh.grad, ww.grad)
    for a, b in zip(res["plain"], res["chunked"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_chunked_under_bf16_autocast_runs_every_gemm_in_bf16_and_matches_plain():
    """Under autocast the backward's GEMMs run in bf16 like the forward's (autograd leaves autocast for the
    backward; the function re-enters its dtype), and the result equals the plain loss under the same autocast
    within bf16 rounding."""
    h, w, y = _problem(1, 40, 32, 500, 0.2)
    res = {}
    for impl in ("plain", "chunked"):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = supervised_ce(hh, ww, y, impl, chunk_size=16)
        with MatmulDtypes() as rec:
            loss.backward()
        res[impl] = (loss.detach().float(), hh.grad, ww.grad)
        if impl == "chunked":
            assert len(rec.seen) == 3 * 3  # 3 chunks x (logits recomputed, grad_h, grad_w)
            assert all(d == torch.bfloat16 for dts in rec.seen for d in dts), rec.seen
    assert res["chunked"][1].dtype == res["chunked"][2].dtype == torch.float32  # grads in the leaves' dtype
    for a, b in zip(res["plain"], res["chunked"]):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
    # and the bf16 result is a rounding of the fp32 one, not something else
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    supervised_ce(hh, ww, y, "chunked", chunk_size=16).backward()
    torch.testing.assert_close(res["chunked"][2], ww.grad, atol=3e-2, rtol=3e-2)
    assert not torch.equal(res["chunked"][2], ww.grad)


def test_model_loss_matches_full_logits_reference():
    """Reference: full logits at every position, HF-style shift, cross-entropy over non-ignored labels."""
    model = GenLIPForCaptioning(genlip_config("tiny", patch_size=8)).eval()
    pix = torch.randn(3, 3, 16, 24)
    ids = torch.randint(0, 512, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 6 + [0]])
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, :3] = IGNORE_INDEX  # the prompt is never supervised
    for impl in ("plain", "chunked"):
        out = model(ids, pix, attention_mask=mask, labels=labels, loss_impl=impl, loss_chunk_size=4)
        logits = model(ids, pix, attention_mask=mask).logits  # (B, 6 + 7, V)
        full_labels = torch.cat([torch.full((3, 6), IGNORE_INDEX), labels], dim=1)
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, 512), full_labels[:, 1:].reshape(-1), ignore_index=-100)
        torch.testing.assert_close(out.loss, ref, atol=1e-5, rtol=1e-5)
        assert out.num_supervised == int((full_labels[:, 1:] != IGNORE_INDEX).sum())


def test_global_normalisation_for_accumulation():
    model = GenLIPForCaptioning(genlip_config("tiny", patch_size=8))
    pix, ids = torch.randn(4, 3, 16, 16), torch.randint(0, 512, (4, 6))
    full = model(ids, pix, labels=ids)
    n = full.num_supervised
    halves = [model(ids[s], pix[s], labels=ids[s], num_items_in_batch=n) for s in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(halves[0].loss + halves[1].loss, full.loss, atol=1e-6, rtol=1e-5)


def test_no_supervised_tokens_gives_zero_loss_with_gradient_graph():
    model = GenLIPForCaptioning(genlip_config("tiny", patch_size=8))
    ids = torch.randint(0, 512, (1, 4))
    out = model(ids, torch.randn(1, 3, 8, 8), labels=torch.full_like(ids, IGNORE_INDEX))
    assert out.loss.item() == 0.0 and out.num_supervised == 0
    out.loss.backward()


def test_fused_chunked_kernels_equal_the_eager_ones_in_fp32_and_under_bf16_autocast():
    """The compiled kernels CUDA runs over each ``[chunk, vocab]`` block (inductor compiles them on the CPU here):
    loss and gradients equal the eager chunked loss's, with a ragged last chunk and a chunk larger than the rows, and
    under bf16 autocast (the softmax gradient handed to the backward GEMMs in bf16, as eager does)."""
    for seed, rows, chunk, amp in ((2, 37, 8, False), (3, 5, 1024, False), (6, 17, 8, False), (4, 40, 16, True)):
        h, w, y = _problem(seed, rows, 32, 500, 0.2)
        res = {}
        for fused in (False, True):
            hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = supervised_ce(hh, ww, y, "chunked", chunk_size=chunk, fused=fused)
            (loss * 0.37).backward()
            res[fused] = (loss.detach(), hh.grad, ww.grad)
        for a, b in zip(res[False], res[True]):  # bf16: one rounding of the softmax gradient may differ by an ulp
            torch.testing.assert_close(b, a, atol=2e-3 if amp else 1e-5, rtol=2e-2 if amp else 1e-5)
        assert res[True][1].abs().sum() > 0 and res[True][2].abs().sum() > 0


def test_fused_chunked_backward_runs_off_the_main_thread():
    """On CUDA autograd runs a backward on its own device thread: the compiled softmax gradient is compiled and
    called there."""
    import threading

    import torch._dynamo

    import genlip.loss as L

    torch._dynamo.reset()
    L._FUSED.clear()
    h, w, y = _problem(5, 20, 16, 300, 0.3)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = supervised_ce(hh, ww, y, "chunked", chunk_size=8, fused=True)
    errors = []

    def backward():
        try:
            loss.backward()
        except Exception as e:  # reported to the test below
            errors.append(e)

    t = threading.Thread(target=backward)
    t.start()
    t.join()
    assert not errors, errors
    ref_h, ref_w = h.clone().requires_grad_(), w.clone().requires_grad_()
    supervised_ce(ref_h, ref_w, y, "chunked", chunk_size=8, fused=False).backward()
    torch.testing.assert_close(hh.grad, ref_h.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ww.grad, ref_w.grad, atol=1e-5, rtol=1e-5)


def test_fused_kernels_that_fail_to_build_say_how_to_run_without_them(monkeypatch):
    """A CUDA machine whose compiler cannot build the kernels (no working Triton) gets one line naming the switch."""
    from torch._dynamo.exc import BackendCompilerFailed

    import genlip.loss as L

    def broken(fn, **kw):
        def run(*a):
            raise BackendCompilerFailed(lambda *x: None, RuntimeError("Cannot find a working triton installation"),
                                        None)
        return run

    monkeypatch.setattr(L, "_FUSED", {})
    monkeypatch.setattr(torch, "compile", broken)
    h, w, y = _problem(7, 9, 16, 50, 0.3)
    try:
        supervised_ce(h, w, y, "chunked", chunk_size=8, fused=True)
    except RuntimeError as e:
        msg = str(e)
    assert "failed to build" in msg and "GENLIP_FUSED_CE=0" in msg and "\n" not in msg, msg


def test_the_environment_switches_the_fused_kernels():
    import os
    import subprocess
    import sys

    def value(setting: str) -> str:
        return subprocess.run([sys.executable, "-c", "import genlip.loss as L; print(L.FUSED_CE)"], check=True,
                              capture_output=True, text=True, env={**os.environ, "GENLIP_FUSED_CE": setting}).stdout
    assert [value(v).strip() for v in ("0", "1", "")] == ["False", "True", "None"]
    # a typo is refused, not taken for unset: by the training commands before anything starts, and by the loss
    p = subprocess.run([sys.executable, "-m", "genlip.train.cli", "--recipe", "stage1_tiny_cpu"], capture_output=True,
                       text=True, env={**os.environ, "GENLIP_FUSED_CE": "yes"})
    assert p.returncode == 2 and p.stderr.strip() == (
        "genlip-pretrain: bad environment: GENLIP_FUSED_CE must be 0 or 1 (unset: compiled on CUDA), not 'yes'")
    code = ("import torch; from genlip.loss import supervised_ce; "
            "supervised_ce(torch.ones(2, 4), torch.ones(5, 4), torch.zeros(2, dtype=torch.long), 'chunked')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "GENLIP_FUSED_CE": "true"})
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("ValueError: GENLIP_FUSED_CE must be")
