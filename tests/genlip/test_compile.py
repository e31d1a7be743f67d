"""``torch.compile(fullgraph=True)`` of a block and of the whole Transformer (inductor runs on the CPU), so a graph
break (a host sync such as ``.item()``, a data-dependent branch) is caught here, not on a GPU cluster."""

import pytest
import torch

from genlip.config import genlip_config
from genlip.modeling import GenLIPForCaptioning


def _inputs(model):
    pix = torch.randn(3, 3, 16, 24)
    ids = torch.randint(0, 64, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6])
    return model.build_inputs(ids, pix, mask)


@pytest.mark.parametrize("backend,mode", [("prefix", "default"), ("dense", "default"),
                                          ("prefix", "max-autotune-no-cudagraphs")])
def test_a_block_compiles_without_graph_breaks_and_computes_the_same(backend, mode):
    """``model.compile_mode`` choices the CPU can run (``reduce-overhead`` and ``max-autotune`` use CUDA graphs)."""
    torch.manual_seed(0)
    model = GenLIPForCaptioning(genlip_config("tiny", patch_size=8, vocab_size=64, drop_path_rate=0.2)).train()
    h, lay, _ = _inputs(model)
    plan = model.vit.plan(lay, backend)
    rope = model.vit.rope(lay.position_ids, dtype=h.dtype)
    block = model.vit.blocks[0]
    torch.manual_seed(1)
    ref = block(h, rope, plan, lay.sample_ids)  # DropPath active: per-sample draws
    compiled = torch.compile(block, fullgraph=True, mode=mode)
    torch.manual_seed(1)
    out = compiled(h, rope, plan, lay.sample_ids)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_the_whole_transformer_compiles_forward_and_backward():
    torch.manual_seed(0)
    model = GenLIPForCaptioning(genlip_config("tiny", patch_size=8, vocab_size=64)).train()
    h, lay, _ = _inputs(model)
    h = h.detach()  # the embeddings are inputs here; the blocks and the final norm are what is compiled
    plan = model.vit.plan(lay)
    ref, _ = model.vit(h, lay, plan)
    ref.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.vit.named_parameters() if p.grad is not None}
    model.zero_grad()
    compiled = torch.compile(model.vit.forward, fullgraph=True)
    out, _ = compiled(h, lay, plan)
    out.square().mean().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for n, p in model.vit.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scope,ac", [("blocks", "none"), ("blocks", "selective"), ("blocks", "full"),
                                      ("transformer", "none")])
def test_the_trainers_compile_scopes_give_the_eager_loss_and_gradients(scope, ac):
    """``model.compile=true`` as genlip-pretrain applies it (``compile_model``): per block (checkpointed from outside
    the compiled block) or the whole stack of blocks; a training forward and backward equal the eager model's.
    Checkpointing inside one whole-stack graph does not trace in dynamo, so the recipe refuses that pair."""
    from genlip.train.loop import compile_model

    def grads(compiled: bool):
        torch.manual_seed(0)
        model = GenLIPForCaptioning(genlip_config("tiny", patch_size=8, vocab_size=64)).train()
        model.vit.activation_checkpointing = ac
        if compiled:
            compile_model(model, scope=scope)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 64, (3, 7), generator=g)
        mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6])
        out = model(ids, torch.randn(3, 3, 16, 24, generator=g), mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
        return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    (ref_loss, ref), (loss, got) = grads(False), grads(True)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    assert got.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=1e-5, rtol=1e-4)


def test_whole_stack_compilation_with_checkpointing_is_refused_by_the_recipe():
    from genlip.train.recipe import ModelRecipe

    for ac in ("selective", "full"):
        with pytest.raises(ValueError, match="compile_scope=transformer needs model.activation_checkpointing=none"):
            ModelRecipe(compile=True, compile_scope="transformer", activation_checkpointing=ac)


@pytest.mark.parametrize("mode,marks", [("default", 0), ("reduce-overhead", 2), ("max-autotune", 2)])
def test_cuda_graph_modes_mark_each_micro_batch_as_a_new_run(monkeypatch, mode, marks):
    """CUDA graphs reuse their outputs' memory from one replay to the next: genlip-pretrain's step tells them where
    each micro-batch's forward + backward begins (modes that use CUDA graphs), and the step is otherwise the same."""
    from types import SimpleNamespace

    from genlip.train.loop import train_step
    from genlip.train.optim import build_optimizer
    from genlip.train.recipe import ModelRecipe, OptimRecipe, Recipe

    seen = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: seen.append(1))
    torch.manual_seed(0)
    model = GenLIPForCaptioning(genlip_config("tiny", patch_size=8, vocab_size=64)).train()
    recipe = Recipe(model=ModelRecipe(preset=None, compile=True, compile_mode=mode))
    run = SimpleNamespace(recipe=recipe, wrapped=model, optimizer=build_optimizer(model, OptimRecipe()),
                          device=torch.device("cpu"), autocast=torch.autocast("cpu", enabled=False),
                          state={"nonfinite_skips": 0})
    g = torch.Generator().manual_seed(1)
    micro = []
    for _ in range(2):
        ids = torch.randint(0, 64, (2, 7), generator=g)
        micro.append({"input_ids": ids, "pixel_values": torch.randn(2, 3, 16, 16, generator=g), "labels": ids})
    loss, grad_norm, n, stop = train_step(run, micro, 1)
    assert stop is False
    assert len(seen) == marks and n == 28 and loss > 0 and grad_norm > 0
