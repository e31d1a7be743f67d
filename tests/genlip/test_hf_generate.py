"""transformers' ``generate()`` on the captioner: greedy, sampling, KV cache and left padding equal our captioning
(:meth:`GenLIPForCaptioning.caption`), and its scores equal the training forward's logits."""

import torch
from transformers import AutoModelForImageTextToText

import genlip  # noqa: F401  (registers the model with the Auto classes)
from genlip.config import genlip_config
from genlip.modeling import GenLIPForCaptioning

PAD, EOS = 0, 9


def _model():
    torch.manual_seed(0)
    return GenLIPForCaptioning(genlip_config("tiny-textproj", patch_size=8, vocab_size=64)).eval()


def _new_tokens(seqs: torch.Tensor, n_prompt: int) -> list[list[int]]:
    """What generate() added after the prompt, up to (not including) EOS, padding dropped."""
    out = []
    for row in seqs[:, n_prompt:].tolist():
        out.append(row[:row.index(EOS)] if EOS in row else row)
    return out


def test_generate_greedy_with_and_without_cache_equals_caption(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is GenLIPForCaptioning
    pix = torch.randn(3, 3, 16, 24)
    prompt = [5, 6, 7]
    ours = model.caption(pix, prompt, max_new_tokens=12, eos_token_id=EOS)
    ids = torch.tensor([prompt] * 3)
    for use_cache in (True, False):
        seqs = loaded.generate(input_ids=ids, pixel_values=pix, max_new_tokens=12, do_sample=False,
                               eos_token_id=EOS, pad_token_id=PAD, use_cache=use_cache)
        assert torch.equal(seqs[:, :3], ids)  # as in transformers' decoder models, the prompt comes first
        assert _new_tokens(seqs, 3) == ours


def test_generate_sampling_equals_caption_sampling():
    model = _model()
    pix = torch.randn(2, 3, 16, 16)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.3, top_k=20)
    torch.manual_seed(7)
    ours = model.caption(pix, [1, 2], eos_token_id=EOS, **kw)
    torch.manual_seed(7)
    seqs = model.generate(input_ids=torch.tensor([[1, 2]] * 2), pixel_values=pix, eos_token_id=EOS,
                          pad_token_id=PAD, **kw)
    assert _new_tokens(seqs, 2) == ours
    torch.manual_seed(8)
    other = model.caption(pix, [1, 2], eos_token_id=EOS, **kw)
    assert other != ours  # the comparison above could have failed: sampling does depend on the seed


def test_left_padded_prompts_generate_as_each_prompt_alone():
    model = _model()
    pix = torch.randn(2, 3, 16, 24)
    prompts = [[5, 6, 7, 8], [11]]
    ids = torch.tensor([[5, 6, 7, 8], [PAD, PAD, PAD, 11]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 1]])
    for use_cache in (True, False):
        seqs = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, max_new_tokens=10,
                              eos_token_id=EOS, pad_token_id=PAD, use_cache=use_cache)
        alone = [model.caption(pix[b:b + 1], p, max_new_tokens=10, eos_token_id=EOS)[0]
                 for b, p in enumerate(prompts)]
        assert _new_tokens(seqs, 4) == alone


def test_generate_scores_equal_the_training_forward_logits():
    model = _model()
    pix = torch.randn(2, 3, 16, 16)
    ids = torch.tensor([[3, 4], [3, 4]])
    out = model.generate(input_ids=ids, pixel_values=pix, max_new_tokens=6, eos_token_id=-1, pad_token_id=PAD,
                         output_logits=True, return_dict_in_generate=True)
    seqs = out.sequences
    # the training forward (fixed layout, attention backend of the recipe) over the finished sequence
    with torch.no_grad():
        full = model(input_ids=seqs, pixel_values=pix).logits
    n_img = (16 // 8) ** 2
    for t, step_logits in enumerate(out.logits):
        ref = full[:, n_img + ids.shape[1] - 1 + t]
        torch.testing.assert_close(step_logits, ref, rtol=1e-5, atol=1e-5)


def test_generate_without_images_is_one_clear_error():
    model = _model()
    try:
        model.generate(input_ids=torch.tensor([[1, 2]]), max_new_tokens=2)
    except ValueError as e:
        assert "pixel_values" in str(e)
    else:
        raise AssertionError("generate() without pixel_values ran")


def test_beam_search_with_the_cache_equals_beam_search_without():
    model = _model()
    pix = torch.randn(2, 3, 16, 24)
    ids = torch.tensor([[5, 6, 7]] * 2)
    kw = dict(input_ids=ids, pixel_values=pix, max_new_tokens=6, num_beams=3, eos_token_id=EOS, pad_token_id=PAD)
    cached, plain = model.generate(**kw), model.generate(**kw, use_cache=False)
    assert torch.equal(cached, plain)  # the cache is reordered with the beams
