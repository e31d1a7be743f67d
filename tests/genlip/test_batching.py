"""Batch arithmetic on any world size (``genlip.run.batching``), and every paper-scale recipe resolved for 8 to 128
GPUs with the paper's budget."""

import math
import random

import pytest

from genlip.run.batching import BatchError, plan_batches
from genlip.run.resources import bundled_names, resolve_recipe
from genlip.train.recipe import load_recipe

STAGE1_SAMPLES = 7_999_979_520  # the paper's 8 epochs of Recap-DataComp-1B, as the reference release counts them
STAGE2_TOKENS = 37_000_000 * 1200  # 37M long-caption samples of ~1200 tokens, one epoch (Table 2)


def _check(plan, global_batch, micro, ws, steps):
    assert plan.world_size * plan.micro_batch * plan.accum == plan.global_batch
    assert 1 <= plan.micro_batch <= micro and plan.accum >= 1
    lowest = 1 if ws * micro > global_batch else max(1, math.ceil(micro / 2))  # few samples per GPU: any micro
    exact = [(m, global_batch // (ws * m)) for m in range(lowest, micro + 1) if global_batch % (ws * m) == 0]
    if exact:  # an exact split exists: taken, with the largest micro-batch (fewest accumulation passes)
        assert plan.global_batch == global_batch and plan.micro_batch == max(m for m, _ in exact)
        assert plan.steps == steps
    else:
        assert plan.changed and abs(plan.budget - global_batch * steps) <= plan.global_batch / 2 + 1


@pytest.mark.parametrize("ws", range(1, 129))
def test_any_world_size_splits_or_rounds_keeping_the_budget(ws):
    rng = random.Random(ws)
    cases = [(32768, 256, 244140), (49152, 256, 162760), (264, 1, 10300), (128, 4, 23000), (8, 8, 100)]
    cases += [(rng.randint(1, 70000), rng.randint(1, 512), rng.randint(100, 300000)) for _ in range(20)]
    for g, m, s in cases:
        plan = plan_batches(g, m, ws, s)
        _check(plan, g, m, ws, s)
        if plan.changed:
            with pytest.raises(BatchError, match="does not split"):
                plan_batches(g, m, ws, s, rounding="exact")
            assert abs(plan.budget - g * s) / (g * s) < 0.01 or s * g < 100 * plan.global_batch


def test_the_nearest_feasible_batch_is_chosen():
    plan = plan_batches(264, 1, 16, 10300)  # 16.5 rows per GPU: 16 x 16 = 256 or 16 x 17 = 272, equally near
    assert (plan.micro_batch, plan.accum, plan.global_batch, plan.steps) == (1, 16, 256, 10622)
    assert "rescaled to 10622" in plan.describe()
    plan = plan_batches(49152, 256, 128, 162760)  # 384 per GPU: micro 192 x 2 rather than rounding
    assert (plan.micro_batch, plan.accum, plan.global_batch, plan.steps) == (192, 2, 49152, 162760)
    assert not plan.changed


PAPER = [n for n in bundled_names("genlip") if not n.endswith("tiny_cpu")]


@pytest.mark.parametrize("name", PAPER)
@pytest.mark.parametrize("ws", [8, 16, 32, 64, 128])
def test_paper_recipes_resolve_on_common_gpu_counts_with_the_paper_budget(name, ws):
    r = load_recipe(resolve_recipe(name, "genlip"))
    plan = plan_batches(r.train.global_batch, r.train.micro_batch, ws, r.train.steps, r.train.batch_rounding)
    if r.stage == 1:
        assert abs(plan.budget - STAGE1_SAMPLES) / STAGE1_SAMPLES < 0.01, plan.describe()
    else:  # rows of max_seq_len tokens
        tokens = plan.budget * r.data.max_seq_len
        assert abs(tokens - STAGE2_TOKENS) / STAGE2_TOKENS < 0.01, plan.describe()
