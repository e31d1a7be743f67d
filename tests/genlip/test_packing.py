"""Stage-2 data: smart resize, packing (every sample once, rows full), packed collation, exact stream resume."""

import pytest
import torch

from genlip.data.packing import RowPacker, collate_packed, pad_to_longest_fill, simulate_stage2_lengths
from genlip.data.transforms import smart_resize
from genlip.loss import IGNORE_INDEX


@pytest.mark.parametrize("h,w", [(100, 300), (2000, 1000), (20, 30), (17, 4000), (512, 512), (3, 600)])
def test_smart_resize_bounds_and_aspect(h, w):
    nh, nw = smart_resize(h, w, 16, 4096, 262144)
    assert nh % 16 == 0 and nw % 16 == 0
    assert 16 <= (nh // 16) * (nw // 16) <= 1024
    if max(h, w) / min(h, w) < 50:
        assert abs((nh / nw) / (h / w) - 1) < 0.35


def test_smart_resize_respects_the_token_budget_for_every_accepted_aspect_ratio():
    """Property over random sizes with aspect <= 200 (what decoding accepts) and random budgets: never above
    max_pixels (the 3980 x 20 image at 64 patches used to become 112), and the same answer as transformers' Qwen2-VL
    rule whenever that one stays within the budget."""
    import random

    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as qwen_smart_resize

    assert smart_resize(20, 3980, 16, 16 * 256, 64 * 256) == (16, 1024)  # the reported case: 64 patches
    rng = random.Random(0)
    for _ in range(20000):
        short = rng.randint(2, 400)
        long = min(int(short * rng.uniform(1, 200)), 200 * short)
        h, w = (short, long) if rng.random() < 0.5 else (long, short)
        lo, hi = rng.choice([(4, 64), (16, 1024), (16, 256), (1, 16)])
        nh, nw = smart_resize(h, w, 16, lo * 256, hi * 256)
        assert nh % 16 == 0 and nw % 16 == 0 and nh * nw <= hi * 256, (h, w, lo, hi, nh, nw)
        try:
            qh, qw = qwen_smart_resize(h, w, 16, lo * 256, hi * 256)
        except ValueError:  # transformers refuses some inputs (e.g. aspect > 200 after rounding)
            continue
        if qh * qw <= hi * 256 and min(h, w) >= 16:  # (below one patch, Qwen2-VL first rounds a side to 0)
            assert (nh, nw) == (qh, qw), (h, w, lo, hi)


def test_packer_places_every_sample_once_within_capacity():
    lengths = simulate_stage2_lengths(2000)
    items = list(enumerate(lengths))
    packer = RowPacker(16384, window=256, min_fill=0.95, length=lambda x: x[1])
    it = iter(items + [(-1, 1)] * 10**6)  # padding items after the real ones so the last windows complete
    rows = packer.take(it, 120)
    seen = [i for row in rows for i, _ in row if i >= 0]
    assert len(seen) == len(set(seen)), "no sample twice"
    assert all(sum(n for _, n in row) <= 16384 for row in rows)
    used = {i for i in seen}
    pending = {i for i, _ in packer.carry} | {i for row in packer.queue for i, _ in row}
    first_unread = max(used | pending) + 1
    assert used | pending == set(range(first_unread)), "nothing read is ever dropped"


def test_packing_fill_beats_pad_to_longest_on_a_realistic_mix():
    lengths = simulate_stage2_lengths(4000, seed=1)
    packer = RowPacker(16384, window=256, min_fill=0.95, length=lambda x: x)
    rows = packer.take(iter(lengths), 200)
    fill = sum(map(sum, rows)) / (16384 * len(rows))
    assert fill >= 0.98, fill
    assert pad_to_longest_fill(lengths, 14) < fill - 0.1


def test_collate_packed_restarts_positions_and_masks_labels():
    def ex(gh, gw, text):
        return {"patches": torch.randn(gh * gw, 3, 4, 4), "grid": (gh, gw), "input_ids": torch.tensor(text),
                "labels": torch.tensor([IGNORE_INDEX] + text[1:])}

    a, b = ex(1, 2, [5, 6, 7]), ex(2, 2, [8, 9])
    batch = collate_packed([[a, b]], 14, pad_id=0)
    assert batch["sample_ids"][0].tolist() == [0] * 5 + [1] * 6 + [-1] * 3
    assert batch["image_ids"][0].tolist() == [0, 0, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, -1]
    assert batch["position_ids"][2, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 3, 0, 0, 0]
    assert batch["labels"][0].tolist()[:11] == [-100, -100, -100, 6, 7, -100, -100, -100, -100, -100, 9]
    assert torch.equal(batch["pixel_values"], torch.cat([a["patches"], b["patches"]]))
    with pytest.raises(ValueError, match="overflows"):
        collate_packed([[a, b]], 10, pad_id=0)


def test_native_stream_resumes_exactly_with_packer_buffer(tmp_path):
    from transformers import AutoTokenizer

    from genlip.data.builders import NativeResBuilder
    from genlip.data.dataset import PretrainStream
    from genlip.data.sequence import CaptionEncoder
    from genlip.data.sources import SourceSpec
    from genlip.data.synth import write_corpus

    corpus = write_corpus(tmp_path / "c", 120, shard_size=30, tokenizer_vocab=500)
    tok = AutoTokenizer.from_pretrained(corpus / "tokenizer")

    def stream(resume=None):
        b = NativeResBuilder(CaptionEncoder(tok, max_caption_tokens=40), 16, 4 * 256, 48 * 256, 160, window=8)
        return iter(PretrainStream([SourceSpec(path=str(corpus / "shards/*.tar"))], b, batch_size=2, seed=5,
                                   resume=resume))

    full = stream()
    ref = [next(full) for _ in range(8)]
    part = stream()
    for _ in range(3):
        b3 = next(part)
    assert b3["_state"]["pending"]["queue"] or b3["_state"]["pending"]["carry"], "the packer holds samples back"
    resumed = stream({"0": b3["_state"]})
    for want in ref[3:]:
        got = next(resumed)
        for k in ("input_ids", "labels", "sample_ids", "position_ids", "pixel_values"):
            assert torch.equal(got[k], want[k]), k
    fills = [(b["sample_ids"] >= 0).float().mean().item() for b in ref]
    assert min(fills) > 0.6
