"""Encoder tools on a tiny checkpoint that learned three captions: genlip-caption (files, folders, shards, batching,
sampling, skips), patch readout (against a direct LM-head computation), the attention-sink analysis (recording plan
equals the real attention; a constructed first-token sink is measured as one), and the Hugging Face export."""

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from genlip.analysis import RecordingPlan, readout, sink_stats
from genlip.data.transforms import fixed_resize
from genlip.masks import image_only_layout
from genlip.modeling import GenLIPForCaptioning, GenLIPVisionModel
from genlip.tools.analyze import main as analyze_main
from genlip.tools.analyze import model_labels
from genlip.tools.caption import main as caption_main
from genlip.tools.common import load_captioner
from genlip.tools.export import main as export_main
from tests.cli import run_cli
from tests.tools_fixtures import CAPTIONS, SIZE, make_captioner, tool_images


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    d = make_captioner(root / "ckpt")
    imgs = root / "imgs"
    (imgs / "sub").mkdir(parents=True)
    for i, im in enumerate(tool_images()):
        im.save(imgs / ("sub" if i == 2 else "") / f"img{i}.png")
    return d, imgs


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_caption_cli_files_folders_shards_and_skips(ckpt, tmp_path, capsys):
    d, imgs = ckpt
    (imgs / "broken.png").write_bytes(b"not a png")
    try:
        out = tmp_path / "caps.jsonl"
        assert caption_main(["--model", str(d), str(imgs), "--size", str(SIZE), "--out", str(out),
                             "--batch-size", "2", "--max-new-tokens", "12"]) == 0
        recs = {r["image"].split("/")[-1]: r for r in _records(out)}
        assert [recs[f"img{i}.png"]["caption"] for i in range(3)] == CAPTIONS  # the learned captions come back
        assert recs["img0.png"]["grid"] == [2, 2] and "broken.png" not in recs
        assert "corrupt_image: 1" in capsys.readouterr().err
    finally:
        (imgs / "broken.png").unlink()
    # batch size 1 gives the same greedy captions as batches of 2 (mixed batches change nothing)
    out1 = tmp_path / "one.jsonl"
    assert caption_main(["--model", str(d), str(imgs), "--size", str(SIZE), "--out", str(out1), "--batch-size", "1",
                         "--max-new-tokens", "12"]) == 0
    assert [r["caption"] for r in _records(out1)] == [r["caption"] for r in _records(out)]
    # a WebDataset shard, native resolution (smart resize: at least 4096 px -> 64x64 -> 8x8 grid)
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tf:
        for i, im in enumerate(tool_images()):
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            info = tarfile.TarInfo(f"{i:04d}.png")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    out2 = tmp_path / "shard.jsonl"
    assert caption_main(["--model", str(d), str(shard), "--out", str(out2), "--max-new-tokens", "4"]) == 0
    recs2 = _records(out2)
    assert len(recs2) == 3 and recs2[0]["image"].endswith("::0000") and recs2[0]["grid"] == [8, 8]
    assert all(r["num_tokens"] <= 4 for r in recs2)
    # sampling: same seed -> same text; very hot sampling differs from greedy somewhere
    outs = []
    for seed in (0, 0):
        o = tmp_path / f"s{len(outs)}.jsonl"
        assert caption_main(["--model", str(d), str(imgs), "--size", str(SIZE), "--out", str(o), "--sample",
                             "--temperature", "5", "--seed", str(seed), "--max-new-tokens", "8"]) == 0
        outs.append([r["caption"] for r in _records(o)])
    assert outs[0] == outs[1] and outs[0] != CAPTIONS
    # errors: a missing input or a missing model is an error (exit code 2), not an empty file; so is a size the
    # model's patches do not divide
    assert caption_main(["--model", str(d), str(tmp_path / "nope.png")]) == 2
    assert caption_main(["--model", str(tmp_path / "nomodel"), str(imgs)]) == 2
    assert caption_main(["--model", str(d), str(imgs), "--size", str(SIZE + 1)]) == 2
    # sampling settings without --sample would be ignored: refused in one line, as is a typo in an option
    for args, words in [(["--temperature", "0.5", "--top-p", "0.9"], "genlip-caption: --temperature, --top-p only "
                                                                    "apply with --sample"),
                        (["--sample", "--top-p", "0"], "--top-p in (0, 1]"),
                        (["--sizee", "32"], "genlip-caption: unrecognized arguments: --sizee 32 (--help lists")]:
        code, _, err = run_cli("genlip-caption", "--model", str(d), str(imgs), *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err


def test_readout_matches_direct_lm_head(ckpt, tmp_path):
    d, imgs = ckpt
    model, tok, _ = load_captioner(d)
    img = tool_images()[0]
    x = fixed_resize(img, 32, model.config.image_mean, model.config.image_std)  # 4x4 patches
    res = readout(model, tok, x, top_k=3)
    # independent path: the HF vision model's final features times the LM head weights read from the file
    from safetensors.torch import load_file

    enc = GenLIPVisionModel.from_pretrained(str(d)).eval()
    feats = enc(x[None]).last_hidden_state[0]
    W = load_file(str(d / "model.safetensors"))["lm_head.weight"]
    top = (feats @ W.T).topk(3).indices
    assert res["grid"] == [4, 4] and len(res["cells"]) == 16
    assert [c["token_ids"] for c in res["cells"]] == top.tolist()
    assert all(c["probs"] == sorted(c["probs"], reverse=True) for c in res["cells"])
    # regions average the features of 2x2 patches
    res2 = readout(model, tok, x, top_k=1, region=2)
    block = feats.view(4, 4, -1)[:2, 2:].reshape(4, -1).mean(0)
    assert res2["cells_grid"] == [2, 2] and res2["cells"][1]["token_ids"][0] == int((block @ W.T).argmax())
    # the CLI writes a PNG (image + grid + words) and the JSON
    assert analyze_main(["readout", "--model", str(d), "--image", str(imgs / "img0.png"), "--size", "32",
                         "--out", str(tmp_path / "ro"), "--region", "2"]) == 0
    png = Image.open(tmp_path / "ro" / "img0_readout.png")
    assert png.size == (64 * 2, 64 * 2)
    data = json.loads((tmp_path / "ro" / "img0_readout.json").read_text())
    assert data["cells"][1]["token_ids"][0] == res2["cells"][1]["token_ids"][0]
    # a region as large as the grid is the whole image; a larger one is a mistake, not silently the same
    assert len(readout(model, tok, x, top_k=1, region=4)["cells"]) == 1
    code, _, err = run_cli("genlip-analyze", "readout", "--model", str(d), "--image", str(imgs / "img0.png"),
                           "--size", "32", "--out", str(tmp_path / "ro5"), "--region", "5")
    assert code == 2 and err.strip() == (  # one line: no loading bar of transformers' before it either
        "genlip-analyze: --region 5 is larger than the image's 4x4 patch grid (at most 4, which averages the whole "
        "image)"), err
    assert not (tmp_path / "ro5").exists()


def test_model_labels_tell_checkpoints_apart():
    assert model_labels(["/r/a/final", "/r/b/checkpoints/step_00000100"]) == ["a", "step_00000100"]
    assert model_labels(["/r/a/checkpoints/step_00000100", "/r/b/checkpoints/step_00000100"]) == [
        "a/checkpoints/step_00000100", "b/checkpoints/step_00000100"]
    assert model_labels(["/x/run/final", "/y/run/checkpoint-8", "/x/run/final"]) == ["x/run", "y/run", "x/run#2"]


def test_recording_plan_is_the_real_attention(ckpt):
    d, _ = ckpt
    model, _, _ = load_captioner(d)
    x = fixed_resize(tool_images()[1], SIZE, model.config.image_mean, model.config.image_std)[None]
    h = model.vit.patch_embed(x)
    layout = image_only_layout(1, 2, 2)
    seen = []
    ref, _ = model.vit(h, layout)
    rec, _ = model.vit(h, layout, RecordingPlan(layout, lambda i, p: seen.append(p)))
    torch.testing.assert_close(rec, ref, atol=1e-5, rtol=1e-5)
    assert len(seen) == len(model.vit.blocks)
    assert torch.allclose(seen[0].sum(-1), torch.ones(1, 4), atol=1e-5)


def _plant_sink(model, strength: float) -> None:
    """Make the first token a sink: white top-left patch -> a big feature on channel 0 -> a key aligned with a
    constant query in the lowest-frequency RoPE channel of every head (where rotation is negligible)."""
    cfg = model.config
    d, hd = cfg.hidden_size, cfg.head_dim
    j = hd // 2 - 1  # the slowest rotating pair (j, j + hd/2)
    with torch.no_grad():
        pe = model.vit.patch_embed.proj
        pe.weight.zero_()
        pe.weight[0] = 4.0 / pe.weight[0].numel()  # channel 0 = 4 x mean pixel value (normalised, in [-1, 1])
        pe.bias.zero_()
        pe.bias[1:] = torch.randn(d - 1) * 0.05
        for blk in model.vit.blocks:
            a = blk.attn
            for h in range(cfg.num_attention_heads):
                a.k_proj.weight[h * hd + j].zero_()
                a.k_proj.weight[h * hd + j, 0] = strength
                a.q_proj.bias[h * hd + j] = strength


def test_sink_analysis_tells_a_sink_from_none(ckpt, tmp_path):
    d, imgs = ckpt
    # images whose top-left patch is white and the rest dark
    im = Image.new("RGB", (32, 32), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 8, 8))
    folder = tmp_path / "sinkimgs"
    folder.mkdir()
    im.save(folder / "a.png")
    im.transpose(Image.FLIP_TOP_BOTTOM).transpose(Image.FLIP_TOP_BOTTOM).save(folder / "b.png")
    sink = GenLIPForCaptioning.from_pretrained(str(d)).eval()
    _plant_sink(sink, 6.0)
    sink.save_pretrained(str(tmp_path / "sink"))
    _, tok, _ = load_captioner(d)
    tok.save_pretrained(str(tmp_path / "sink"))
    flat = GenLIPForCaptioning.from_pretrained(str(d)).eval()
    _plant_sink(flat, 0.0)
    x = fixed_resize(im, 32, flat.config.image_mean, flat.config.image_std)
    s, f = sink_stats(sink, tok, [x], max_new_tokens=4), sink_stats(flat, tok, [x], max_new_tokens=4)
    assert s["mean"]["text_to_first"] > 0.5 and f["mean"]["text_to_first"] < 0.2, (s["mean"], f["mean"])
    assert s["mean"]["image_to_first"] > 0.5 and f["mean"]["image_to_first"] < 0.3
    for r in (s, f):  # masses are fractions of one softmax row
        assert all(0 <= v["text_to_first"] <= v["text_to_image"] <= 1 + 1e-6 for v in r["layers"])
    # the CLI: two checkpoints side by side, JSON + PNG
    out = tmp_path / "sinkout"
    assert analyze_main(["sink", "--model", str(tmp_path / "sink"), "--model", str(d), "--images", str(folder),
                         "--size", "32", "--out", str(out), "--max-new-tokens", "4"]) == 0
    data = json.loads((out / "sink.json").read_text())
    assert list(data["models"]) == ["sink", "ckpt"] and data["images"] == 2
    assert data["models"]["sink"]["mean"]["text_to_first"] > data["models"]["ckpt"]["mean"]["text_to_first"]
    assert (out / "sink.png").stat().st_size > 5000


def test_hf_export_is_standalone_and_identical(ckpt, tmp_path):
    from safetensors import safe_open
    from transformers import AutoImageProcessor, AutoModel

    import genlip  # noqa: F401  (registers the architecture with transformers' Auto classes)

    d, _ = ckpt
    for _ in range(2):  # the second time into its own earlier export: replaced
        assert export_main(["hf", "--model", str(d), "--out", str(tmp_path / "hf"), "--image-size", "32"]) == 0
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert keys and not any(k.startswith(("lm_head", "embed_tokens")) for k in keys)
    enc = AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert type(enc).__name__ == "GenLIPVisionModel"
    proc = AutoImageProcessor.from_pretrained(str(tmp_path / "hf"))
    img = tool_images()[2]
    px = proc(images=[img], return_tensors="pt")["pixel_values"]
    ours = fixed_resize(img, 32, enc.config.image_mean, enc.config.image_std)[None]
    # the processor is stage 1's transform; resampling implementations differ slightly (stated tolerance 0.05)
    assert px.shape == ours.shape and (px - ours).abs().max() < 0.05
    model, _, _ = load_captioner(d)
    h = model.vit.patch_embed(ours)
    ref, _ = model.vit(h, image_only_layout(1, 4, 4))
    torch.testing.assert_close(enc(ours).last_hidden_state, ref, atol=1e-5, rtol=1e-5)
    # a checkpoint without encoder weights is refused instead of silently initialised
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    sd = {k: v for k, v in load_file(str(d / "model.safetensors")).items() if "blocks.0.attn.k_proj" not in k}
    save_file(sd, str(broken / "model.safetensors"))
    (broken / "config.json").write_text((d / "config.json").read_text())
    assert export_main(["hf", "--model", str(broken), "--out", str(tmp_path / "hf2")]) == 2


def test_probe_and_timm_through_the_clis(ckpt, tmp_path):
    pytest.importorskip("timm")
    from genlip.export_timm import load_timm_export

    d, _ = ckpt
    # probes: a colour-classified folder dataset; both kinds in one JSON
    for split, n in (("train", 6), ("val", 3)):
        for name, col in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            (tmp_path / "ds" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 20), tuple(min(255, c + 7 * i) for c in col)).save(
                    tmp_path / "ds" / split / name / f"{i}.png")
    assert analyze_main(["probe", "--model", str(d), "--data", str(tmp_path / "ds"), "--kind", "both",
                         "--image-size", "16", "--epochs", "10", "--out", str(tmp_path / "p.json")]) == 0
    for bad, words in [(["--epochs", "0"], "--epochs must be at least 1, got 0"),
                       (["--lr", "-1"], "--lr must be above 0, got [-1.0]")]:
        code, _, err = run_cli("genlip-analyze", "probe", "--model", str(d), "--data", str(tmp_path / "ds"), *bad)
        assert code == 2 and err.strip().splitlines() == [f"genlip-analyze: {words} (--help lists the options)"]
    res = json.loads((tmp_path / "p.json").read_text())
    assert set(res) == {"linear", "attentive"} and res["linear"]["num_val"] == 6 and res["linear"]["top1"] > 50
    # timm: the exported NaFlexViT gives our features
    assert export_main(["timm", "--model", str(d), "--out", str(tmp_path / "timm")]) == 0
    tm = load_timm_export(tmp_path / "timm").eval()
    model, _, _ = load_captioner(d)
    x = fixed_resize(tool_images()[0], 32, model.config.image_mean, model.config.image_std)[None]
    ref, _ = model.vit(model.vit.patch_embed(x), image_only_layout(1, 4, 4))
    with torch.no_grad():
        torch.testing.assert_close(tm.forward_features(x), ref, atol=1e-4, rtol=1e-4)
    # again into its own output: replaced; into a file, a folder of other files or the other kind's export: refused
    assert export_main(["timm", "--model", str(d), "--out", str(tmp_path / "timm")]) == 0
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(b"png")
    for out, kind, words in [(tmp_path / "p.json", "timm", "is a file, not a directory"),
                             (tmp_path / "photos", "hf", "holds files this command did not write (a.png)"),
                             (tmp_path / "timm", "hf", "holds another kind of export than hf (its config.json)")]:
        code, _, err = run_cli("genlip-export", kind, "--model", str(d), "--out", str(out))
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert sorted(f.name for f in (tmp_path / "photos").iterdir()) == ["a.png"]


def test_exports_write_a_model_card_from_the_checkpoints_records(ckpt, tmp_path):
    """Both exports write a README.md (the Hub's model page): its front matter names the library that loads it,
    and its training section is read from the checkpoint's recipe and trainer state, not made up; a model without
    them gets no training section. A README.md of the user's own in --out is not overwritten."""
    import shutil

    import yaml

    from genlip.run.config import save_recipe
    from genlip.train.recipe import load_recipe

    d, _ = ckpt
    src = tmp_path / "step_00000005"
    shutil.copytree(d, src)
    recipe = load_recipe(Path(__file__).parents[2] / "recipes" / "genlip" / "stage2_tiny_cpu.yaml", [
        "data.sources=[{type: wds, path: '/d/{0..9}.tar', caption_fields: [json.re_caption]}]", "data.synth=null",
        "model.init_from=runs/s1", "train.steps=7", "optim.lr=3e-4"])
    save_recipe(recipe, src / "recipe.yaml")
    (src / "trainer_state.json").write_text(json.dumps({"step": 5, "samples": 1234, "tokens": 56789,
                                                        "skips": {"seen": 40, "skipped": {"corrupt_image": 2}}}))
    for kind in ("hf", "timm"):
        if kind == "timm":
            pytest.importorskip("timm")
        assert export_main([kind, "--model", str(src), "--out", str(tmp_path / kind)]) == 0
        card = (tmp_path / kind / "README.md").read_text()
        front = yaml.safe_load(card.split("---")[1])
        assert front["library_name"] == {"hf": "transformers", "timm": "timm"}[kind]
        assert "genlip" in front["tags"] and front["pipeline_tag"] == "image-feature-extraction"
        assert f"genlip-export {kind}" in card and str(tmp_path / kind) in card  # the loading example's path
        assert "- Stage 2 (native aspect ratio, packed rows of 256 tokens, 4-64 patches per image): 5 of 7 steps" \
            in card
        # the card's own example runs as written and gives the features
        code = card.split("```python\n")[1].split("```")[0]
        scope = {"image": tool_images()[0], "pixels": torch.randn(1, 3, 32, 48)}
        exec(code, scope)
        width = json.loads((d / "config.json").read_text())["hidden_size"]
        assert scope["features"].ndim == 3 and scope["features"].shape[-1] == width and f"{width}]" in code
        assert "Started from `runs/s1`" in card and "1,234 samples, 56,789 tokens" in card
        assert "peak learning rate 0.0003" in card and "`/d/{0..9}.tar` (wds, weight 1.0, caption from " \
            "json.re_caption)" in card and "Records skipped: 2 of 40 (corrupt_image 2)" in card
    # a contrastive baseline's card does not call it GenLIP-pretrained
    from genlip.export_card import model_card
    from genlip.modeling import GenLIPVisionModel as Enc

    save_recipe(load_recipe(None, ["model.objective=sigmoid"]), src / "recipe.yaml")
    card = model_card(Enc.config_class.from_pretrained(str(src)), src, "hf", "out", 1)
    assert "trained with the sigmoid contrastive objective" in card and "A ViT pretrained with" not in card
    assert "Skipped by source" not in card  # one source: the totals say it
    (src / "trainer_state.json").write_text(json.dumps({"step": 5, "skips": {
        "seen": 40, "skipped": {"corrupt_image": 2}, "by_source": {"web": {"seen": 30, "corrupt_image": 2},
                                                                   "docs": {"seen": 10}}}}))
    card = model_card(Enc.config_class.from_pretrained(str(src)), src, "hf", "out", 1)
    assert "- Skipped by source: docs: 0 of 10 read; web: 2 of 30 read {'corrupt_image': 2}" in card
    # the fixture's checkpoint has no recipe: no training section, the rest as before
    assert export_main(["hf", "--model", str(d), "--out", str(tmp_path / "bare")]) == 0
    bare = (tmp_path / "bare" / "README.md").read_text()
    assert "## Training" not in bare and "## Inputs" in bare and "mean [0.5, 0.5, 0.5]" in bare
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes\n")
    code, _, err = run_cli("genlip-export", "hf", "--model", str(d), "--out", str(mine))
    assert code == 2 and err.strip() == f"genlip-export: --out {mine} holds files this command did not write " \
                                        "(README.md)", err
    assert (mine / "README.md").read_text() == "my notes\n"


def test_export_random_is_the_untrained_baseline_with_the_models_architecture(ckpt, tmp_path):
    """`genlip-export random`: an hf export of a randomly initialised encoder (the toolkit's initialisation, seeded)
    with the model's architecture and preprocessing, for a sweep's or pipeline's untrained baseline; the card says it
    is random; it never silently replaces a trained export (or the other way round)."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    import genlip  # noqa: F401

    d, _ = ckpt
    trained = load_file(str(d / "model.safetensors"))
    for _ in range(2):  # again into its own output: replaced
        assert export_main(["random", "--model", str(d), "--out", str(tmp_path / "rnd"), "--seed", "3"]) == 0
    rnd = AutoModel.from_pretrained(str(tmp_path / "rnd"))
    src = GenLIPVisionModel.from_pretrained(str(d)).config.to_dict()
    same = {"architectures": None, "_name_or_path": None}
    assert rnd.config.to_dict() | same == src | same
    weights = load_file(str(tmp_path / "rnd" / "model.safetensors"))
    shared = [k for k in weights if f"vit.{k}" in trained or k in trained]
    assert shared and all(not torch.equal(v, trained.get(k, trained.get(f"vit.{k}"))) for k, v in weights.items()
                          if k in shared and v.numel() > 64)
    torch.manual_seed(3)
    again = GenLIPVisionModel(rnd.config).state_dict()
    assert all(torch.equal(weights[k], again[k]) for k in weights)  # the seed decides
    card = (tmp_path / "rnd" / "README.md").read_text()
    assert "**Random weights, not trained**" in card and "seed 3" in card and "## Training" not in card
    assert export_main(["hf", "--model", str(d), "--out", str(tmp_path / "hf")]) == 0
    for kind, out in (("random", "hf"), ("hf", "rnd")):
        code, _, err = run_cli("genlip-export", kind, "--model", str(d), "--out", str(tmp_path / out))
        assert code == 2 and err.strip() == (f"genlip-export: --out {tmp_path / out} holds another kind of export "
                                             f"than {kind} (its README.md)"), err
