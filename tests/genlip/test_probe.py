"""Probes on frozen features: image-folder reading and skips, feature parity, linear / attentive probes that learn
what they should (and nothing from shuffled labels), determinism, the command-line helpers."""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genlip  # noqa: F401  (registers the Auto classes)
from genlip.config import genlip_config
from genlip.modeling import GenLIPForCaptioning, GenLIPVisionModel
from genlip.probe import (
    AttentiveProbe,
    LinearProbe,
    ProbeDataError,
    extract_features,
    load_encoder,
    read_image_folder,
    run_probe,
    run_probes,
)
from genlip.tools.probe_cli import add_probe_args, probe_from_args

CLASSES = ("c0", "c1", "c2")
CHANCE = 100.0 / len(CLASSES)
FAST = dict(image_size=32, epochs=30, lr=1e-3, batch_size=16)


# ----------------------------------------------------------------------------------------------- generated data


def colour(rng, c):
    """Class = dominant colour (red / green / blue), with brightness jitter and pixel noise."""
    base = np.array([(220, 40, 40), (40, 200, 40), (40, 40, 220)][c], float) * rng.uniform(0.7, 1.0)
    return base + rng.normal(0, 20, (32, 32, 3))


def quadrant(rng, c):
    """Class = which quadrant (top-left, top-right, bottom-left) holds a bright square on a dark noisy image."""
    a = rng.normal(60, 25, (32, 32, 3))
    y, x = [(0, 0), (0, 16), (16, 0)][c]
    a[y:y + 16, x:x + 16] = rng.normal(230, 15, (16, 16, 3))
    return a


def small_object(rng, c):
    """Class = colour of one checkered 8x8 object at a random patch position on a random-colour background: one
    token of sixteen carries the class, so mean pooling dilutes it and attention pooling can pick it out."""
    a = np.ones((32, 32, 3)) * rng.uniform(0, 255, 3) + rng.normal(0, 10, (32, 32, 3))
    py, px = rng.integers(0, 4, 2)
    chk = (np.indices((8, 8)).sum(0) % 2)[..., None]
    rgb = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255)][c])
    a[py * 8:py * 8 + 8, px * 8:px * 8 + 8] = chk * rgb + (1 - chk) * 255
    return a


def make_folder(root: Path, draw, n_train=20, n_val=10, seed=0, train_labels=None) -> Path:
    """``root/{train,val}/c<k>/<i>.png``; ``train_labels`` (one per train image, in generation order) overrides
    the folder a train image goes to."""
    rng = np.random.default_rng(seed)
    j = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for c in range(len(CLASSES)):
            for i in range(n):
                img = Image.fromarray(np.clip(draw(rng, c), 0, 255).astype(np.uint8))
                label = c
                if split == "train" and train_labels is not None:
                    label = int(train_labels[j])
                    j += 1
                d = root / split / CLASSES[label]
                d.mkdir(parents=True, exist_ok=True)
                img.save(d / f"{c}_{i:03d}.png")
    return root


def tiny_encoder(seed=0, **overrides) -> GenLIPVisionModel:
    torch.manual_seed(seed)
    return GenLIPVisionModel(genlip_config("tiny", patch_size=8, **overrides)).eval()


@pytest.fixture(scope="module")
def colour_root(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("colour"), colour)


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


# ------------------------------------------------------------------------------------------------------ the folder


def test_read_image_folder_lists_classes_and_ignores_non_images(tmp_path):
    root = make_folder(tmp_path, colour, n_train=2, n_val=1)
    (root / "train" / "c0" / "notes.txt").write_text("not an image")
    (root / "train" / "c0" / ".hidden.png").write_bytes(b"")
    shutil.rmtree(root / "val" / "c2")  # val may cover a subset of the classes
    data = read_image_folder(root)
    assert data.classes == list(CLASSES)
    assert len(data.train) == 6 and len(data.val) == 2
    assert sorted({y for _, y in data.train}) == [0, 1, 2] and sorted({y for _, y in data.val}) == [0, 1]
    assert all(p.suffix == ".png" and p.parent.name == CLASSES[y] for p, y in data.train)


def test_dataset_errors_are_clear(tmp_path, encoder):
    root = make_folder(tmp_path / "d", colour, n_train=2, n_val=1)
    (root / "val" / "dog").mkdir()
    Image.new("RGB", (32, 32)).save(root / "val" / "dog" / "x.png")
    with pytest.raises(ProbeDataError, match=r"val classes not present in train: \['dog'\]"):
        run_probe(encoder, root, **FAST)
    shutil.rmtree(root / "val" / "dog")
    (root / "train" / "c3").mkdir()
    with pytest.raises(ProbeDataError, match="c3 has no images"):
        read_image_folder(root)
    shutil.rmtree(root / "train" / "c3")
    shutil.rmtree(root / "val")
    (root / "val").mkdir()
    with pytest.raises(ProbeDataError, match="is empty"):
        read_image_folder(root)
    shutil.rmtree(root / "val")
    with pytest.raises(ProbeDataError, match="not an image-folder dataset"):
        read_image_folder(root)
    # a class whose every train image is corrupt cannot be probed
    root2 = make_folder(tmp_path / "e", colour, n_train=2, n_val=1)
    for p in (root2 / "train" / "c1").iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(ProbeDataError, match=r"without a usable train image.*c1"):
        run_probe(encoder, root2, **FAST)


def test_corrupt_train_file_is_counted_not_substituted(tmp_path, colour_root, encoder):
    root = tmp_path / "ds"
    shutil.copytree(colour_root, root)
    bad = sorted((root / "train" / "c1").iterdir())[3]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing sensible")
    (root / "train" / "c1" / "README.txt").write_text("ignored, not an image")
    clean = run_probe(encoder, colour_root, **FAST)
    r = run_probe(encoder, root, **FAST)
    assert clean["num_train"] == 60 and clean["skipped"]["count"] == 0
    assert r["num_train"] == clean["num_train"] - 1 and r["num_val"] == clean["num_val"] == 30
    assert r["skipped"]["count"] == 1 and r["skipped"]["train"] == 1 and r["skipped"]["val"] == 0
    assert r["skipped"]["reasons"] == {"corrupt_image": 1}
    assert str(bad) in r["skipped"]["files"][0]
    feats = extract_features(encoder, [p for p, _ in read_image_folder(root).train], 32)
    assert feats.pooled.shape == (59, 64) and len(feats.kept) == 59 and feats.skips.seen == 60


# ------------------------------------------------------------------------------------------------------- features


def _direct_pixels(paths, size):
    """The preprocessing written out independently: RGB, bilinear resize, [0, 1], (x - 0.5) / 0.5."""
    arrs = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
            for p in paths]
    return (torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2) - 0.5) / 0.5


def test_pooled_features_equal_mean_of_encoder_output(tmp_path, encoder):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(5):  # odd sizes, so the resize matters; a grey and a palette image for the RGB conversion
        img = Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8))
        img = img.convert("L") if i == 3 else img.convert("P") if i == 4 else img
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    feats = extract_features(encoder, paths, image_size=32, batch_size=2, keep_tokens=True)
    with torch.no_grad():
        hidden = encoder(_direct_pixels(paths, 32)).last_hidden_state
    assert feats.kept == list(range(5)) and feats.skips.n_skipped == 0
    assert feats.tokens.shape == (5, 16, 64)
    torch.testing.assert_close(feats.pooled, hidden.mean(dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(feats.tokens, hidden, atol=1e-6, rtol=0)
    assert not encoder.training


def test_encoder_loads_from_pretraining_checkpoint_and_run_dir(tmp_path):
    torch.manual_seed(3)
    cap = GenLIPForCaptioning(genlip_config("tiny-textproj", patch_size=8)).eval()
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000010"
    cap.save_pretrained(ckpt)
    (ckpt / "trainer_state.json").write_text("{}")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (32, 32), (40 * i, 100, 200 - 50 * i)).save(paths[-1])
    from genlip.masks import image_only_layout

    with torch.no_grad():
        px = _direct_pixels(paths, 32)
        ref = cap.vit(cap.vit.patch_embed(px), image_only_layout(3, 4, 4))[0].mean(1)
    for source in (ckpt, tmp_path / "run", cap):  # checkpoint dir, run dir (newest checkpoint), model in memory
        enc = load_encoder(source)
        feats = extract_features(enc, paths, image_size=32)
        torch.testing.assert_close(feats.pooled, ref, atol=1e-6, rtol=0)
    assert isinstance(load_encoder(ckpt), GenLIPVisionModel)
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------------- probes


def test_probe_modules_shapes():
    x = torch.randn(4, 6, 32)
    att = AttentiveProbe(32, 3, num_heads=4)
    assert att(x).shape == (4, 3)
    w = att.attention(x)
    assert w.shape == (4, 4, 6) and torch.allclose(w.sum(-1), torch.ones(4, 4))
    assert LinearProbe(32, 3)(x.mean(1)).shape == (4, 3)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in LinearProbe(32, 3).modules())


def test_linear_probe_reads_colour(colour_root, encoder):
    r = run_probe(encoder, colour_root, "linear", **FAST)
    print(f"colour: linear top-1 {r['top1']:.1f} (train {r['train_top1']:.1f})")
    assert r["kind"] == "linear" and r["num_classes"] == 3 and r["feature_dim"] == 64
    assert r["num_train"] == 60 and r["num_val"] == 30 and r["skipped"]["count"] == 0
    assert r["top1"] >= 90.0 > CHANCE + 50


def test_attentive_probe_picks_out_a_small_object(tmp_path, encoder):
    root = make_folder(tmp_path, small_object)
    r = run_probes(encoder, root, ("linear", "attentive"), **FAST)
    lin, att = r["linear"]["top1"], r["attentive"]["top1"]
    print(f"small object: attentive top-1 {att:.1f}, linear {lin:.1f}")
    assert r["attentive"]["num_tokens"] == 16 and r["attentive"]["feature_dim"] == 64
    assert att >= 85.0
    assert att >= lin + 25.0, "attention pooling should read the one token that mean pooling dilutes"


def test_attentive_probe_reads_position(tmp_path):
    # GenLIP has no absolute position embedding: position reaches the tokens only through RoPE attention. A random
    # encoder with default LayerScale 0.1 and theta 1e4 mixes too little over a 4x4 grid for that to show, so this
    # one rotates fast (theta 10) and keeps its residual branches at full scale.
    root = make_folder(tmp_path, quadrant)
    enc = tiny_encoder(layerscale_init=1.0, rope_theta=10.0)
    r = run_probe(enc, root, "attentive", **FAST)
    print(f"quadrant: attentive top-1 {r['top1']:.1f}")
    assert r["top1"] >= CHANCE + 30.0


def test_shuffled_train_labels_give_chance(tmp_path, encoder):
    # Every true class is spread evenly over the three labels (7 + 7 + 7 of its 21 images), so the train labels carry
    # no class information at all; a plain random permutation leaves a chance association that a good probe learns.
    tops = {"linear": [], "attentive": []}
    for name, draw in (("colour", colour), ("object", small_object)):
        for s in range(4):
            rng = np.random.default_rng(100 + s)
            labels = np.concatenate([rng.permutation(np.repeat(np.arange(3), 7)) for _ in CLASSES])
            root = make_folder(tmp_path / f"{name}{s}", draw, n_train=21, train_labels=labels)
            r = run_probes(encoder, root, ("linear", "attentive"), **FAST)
            assert r["linear"]["num_train"] == 63 and r["linear"]["num_val"] == 30
            for kind in tops:
                tops[kind].append(r[kind]["top1"])
    for kind, t in tops.items():
        print(f"shuffled labels: {kind} top-1 {[round(x) for x in t]} (mean {np.mean(t):.1f}, chance {CHANCE:.1f})")
        assert np.mean(t) <= CHANCE + 15.0, (kind, t)


def test_same_seed_same_result_and_lr_sweep(colour_root, encoder):
    kw = dict(FAST, epochs=5, lr=[1e-4, 3e-3])
    a = run_probes(encoder, colour_root, ("linear", "attentive"), seed=7, **kw)
    b = run_probes(encoder, colour_root, ("linear", "attentive"), seed=7, **kw)
    assert a == b
    for r in a.values():
        assert set(r["lr_sweep"]) == {"0.0001", "0.003"} and r["lr"] in (1e-4, 3e-3)


# ---------------------------------------------------------------------------------------------------- command line


def test_cli_both_kinds_writes_json(tmp_path, colour_root, capsys):
    model_dir = tmp_path / "enc"
    tiny_encoder().save_pretrained(model_dir)
    out = tmp_path / "res" / "probe.json"
    parser = add_probe_args(argparse.ArgumentParser())
    args = parser.parse_args(["--model", str(model_dir), "--data", str(colour_root), "--kind", "both",
                              "--image-size", "32", "--epochs", "10", "--lr", "1e-3", "--batch-size", "16",
                              "--seed", "1", "--device", "cpu", "--num-workers", "2", "--out", str(out)])
    assert probe_from_args(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("linear probe: top-1") and lines[1].startswith("attentive probe")
    res = json.loads(out.read_text())
    assert set(res) == {"linear", "attentive"}
    assert res["linear"]["num_train"] == 60 and res["attentive"]["num_val"] == 30 and res["linear"]["seed"] == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--data", "d", "--kind", "mlp"])
