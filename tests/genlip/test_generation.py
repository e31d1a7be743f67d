"""Captioning: the KV cache changes nothing; mixed sizes batch correctly; EOS stops a sample."""

import torch

from genlip.config import genlip_config
from genlip.modeling import GenLIPForCaptioning


def _model():
    torch.manual_seed(0)
    return GenLIPForCaptioning(genlip_config("tiny-textproj", patch_size=8, vocab_size=64)).eval()


def test_cached_and_uncached_greedy_give_the_same_tokens():
    model = _model()
    pix = torch.randn(3, 3, 16, 24)
    cached = model.caption(pix, [5, 6, 7], max_new_tokens=12, eos_token_id=-1, use_cache=True)
    plain = model.caption(pix, [5, 6, 7], max_new_tokens=12, eos_token_id=-1, use_cache=False)
    assert cached == plain and all(len(c) == 12 for c in cached)


def test_cached_and_uncached_sampling_give_the_same_tokens():
    model = _model()
    pix = torch.randn(2, 3, 16, 16)
    kw = dict(max_new_tokens=10, eos_token_id=-1, do_sample=True, temperature=1.3, top_k=20, top_p=0.9)
    a = model.caption(pix, [1, 2], use_cache=True, generator=torch.Generator().manual_seed(7), **kw)
    b = model.caption(pix, [1, 2], use_cache=False, generator=torch.Generator().manual_seed(7), **kw)
    assert a == b


def test_mixed_resolutions_batch_like_single_images():
    model = _model()
    imgs = [torch.randn(3, 16, 40), torch.randn(3, 8, 8), torch.randn(3, 32, 16)]
    batch = model.caption(imgs, [3, 4], max_new_tokens=8, eos_token_id=-1)
    alone = [model.caption([i], [3, 4], max_new_tokens=8, eos_token_id=-1)[0] for i in imgs]
    assert batch == alone


def test_generation_stops_at_eos_per_sample():
    model = _model()
    pix = torch.randn(2, 3, 16, 16)
    free = model.caption(pix, [1], max_new_tokens=6, eos_token_id=-1)
    eos = free[0][2]  # pretend the third token of sample 0 is EOS
    stopped = model.caption(pix, [1], max_new_tokens=6, eos_token_id=eos)
    assert stopped[0] == free[0][:free[0].index(eos)]
    expect1 = free[1][:free[1].index(eos)] if eos in free[1] else free[1]
    assert stopped[1] == expect1
