"""The generated corpus (deterministic, captions describe the drawing) and the GenLIP text sequence."""

import hashlib
import json

import pytest
import torch
from transformers import AutoTokenizer

from genlip.data import cli as data_cli
from genlip.data.decode import SkipSample
from genlip.data.sequence import CaptionEncoder, collate_fixed
from genlip.data.synth import synth_sample, write_corpus
from genlip.loss import IGNORE_INDEX


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("c") / "corpus", 60, seed=3, shard_size=25, tokenizer_vocab=600)


def test_corpus_is_deterministic(corpus, tmp_path):
    again = write_corpus(tmp_path / "again", 60, seed=3, shard_size=25, tokenizer_vocab=600)
    for name in ("000000.tar", "000001.tar", "000002.tar"):
        a = hashlib.sha256((corpus / "shards" / name).read_bytes()).hexdigest()
        b = hashlib.sha256((again / "shards" / name).read_bytes()).hexdigest()
        assert a == b
    other = write_corpus(tmp_path / "other", 25, seed=4, shard_size=25, tokenizer_vocab=600)
    assert (other / "shards/000000.tar").read_bytes() != (corpus / "shards/000000.tar").read_bytes()


def test_captions_describe_what_is_drawn():
    for i in range(40):
        img, caption, meta = synth_sample(i, seed=1)
        if meta["kind"] == "chart":
            for lab, v in zip(meta["labels"], meta["values"]):
                assert f"{lab} is {v}" in caption
            # the drawn bar heights follow the values: taller bar -> more coloured pixels in its column
            px = img.convert("RGB").load()
            heights = [sum(1 for y in range(img.height) if px[30 + 40 * k + 12, y] != (255, 255, 255)
                           and px[30 + 40 * k + 12, y] != (0, 0, 0)) for k in range(len(meta["values"]))]
            order = sorted(range(len(heights)), key=lambda k: heights[k])
            assert [meta["values"][k] for k in order] == sorted(meta["values"])
        elif meta["kind"] in ("word", "sentence"):
            assert f'"{meta["text"]}"' in caption
            assert img.convert("L").getextrema()[0] < 200, "text pixels are drawn"


def test_tokenizer_directory_is_a_real_transformers_tokenizer(corpus):
    tok = AutoTokenizer.from_pretrained(corpus / "tokenizer")
    assert tok.convert_tokens_to_ids("<|im_end|>") != tok.unk_token_id
    text = json.loads((corpus / "corpus.json").read_text())
    assert text["samples"] == 60
    ids = tok("The word apple<|im_end|>").input_ids
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(ids) == "The word apple<|im_end|>"


def test_sequence_prompt_unsupervised_caption_and_eos_supervised(corpus):
    tok = AutoTokenizer.from_pretrained(corpus / "tokenizer")
    enc = CaptionEncoder(tok, "Describe the image in detail.", max_caption_tokens=5)
    ids, labels = enc("a red circle on a white background with many more words")
    n_prompt = len(tok("Describe the image in detail.").input_ids)
    assert (labels[:n_prompt] == IGNORE_INDEX).all()
    assert len(ids) == n_prompt + 5 + len(enc.eos_ids), "caption truncated at 5 tokens"
    assert ids[-2:].tolist() == [tok.convert_tokens_to_ids("<|im_end|>"), tok("\n").input_ids[0]]
    assert torch.equal(labels[n_prompt:], ids[n_prompt:]), "caption and EOS are supervised"
    with pytest.raises(SkipSample, match="^empty_caption: no tokens$") as skipped:
        enc("")
    assert skipped.value.reason == "empty_caption", "the stable label the decode statistics count by"


def test_collate_pads_text_and_masks_labels():
    ex = [{"pixel_values": torch.zeros(3, 4, 4), "input_ids": torch.tensor([1, 2, 3]),
           "labels": torch.tensor([-100, 2, 3])},
          {"pixel_values": torch.ones(3, 4, 4), "input_ids": torch.tensor([4]), "labels": torch.tensor([4])}]
    b = collate_fixed(ex, pad_id=0)
    assert b["input_ids"].shape == (2, 8) and b["attention_mask"].sum(1).tolist() == [3, 1]
    assert (b["labels"][1, 1:] == IGNORE_INDEX).all() and b["labels"][1, 0] == 4


def test_the_synth_command_replaces_its_earlier_corpus_and_refuses_other_directories(tmp_path):
    """A smaller corpus written over a bigger one leaves no stale shard for a ``shards/*.tar`` glob to read; a
    directory holding something else is never written into; sizes below 1 are one line, exit 2."""
    out = tmp_path / "c"
    assert data_cli.main(["synth", "--out", str(out), "--samples", "12", "--shard-size", "4", "--vocab", "300"]) == 0
    assert len(list((out / "shards").glob("*.tar"))) == 3
    assert data_cli.main(["synth", "--out", str(out), "--samples", "4", "--shard-size", "4", "--vocab", "300"]) == 0
    assert [p.name for p in (out / "shards").glob("*.tar")] == ["000000.tar"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert data_cli.main(["synth", "--out", str(tmp_path / "mine"), "--samples", "4"]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (out / "notes.txt").write_text("keep me too")  # a corpus directory with the user's own file in it
    assert data_cli.main(["synth", "--out", str(out), "--samples", "4", "--vocab", "300"]) == 2
    assert (out / "notes.txt").exists() and (out / "corpus.json").exists() and not (tmp_path / "c.partial").exists()
    assert data_cli.main(["synth", "--out", str(tmp_path / "z"), "--samples", "0"]) == 2
    assert data_cli.main(["synth-sft", "--out", str(tmp_path / "z"), "--samples", "0"]) == 2
    assert not (tmp_path / "z").exists()


def _make_slowly(tmp, log):
    import time

    with open(log, "a") as f:
        f.write("made\n")
    time.sleep(2.0)  # long enough that the other job arrives while this one is making it, even on a busy machine
    tmp.mkdir(parents=True)
    (tmp / "info.json").write_text(json.dumps({"samples": 3, "seed": 0}))


def _job(home, log, start, results):
    import contextlib
    import io
    import os

    from genlip.run.dirs import generated_dir

    os.environ["GENLIP_HOME"] = str(home)
    start.wait()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        d = generated_dir("$GENLIP_HOME/data-n{samples}-s{seed}", 3, 0, "info.json",
                          lambda tmp: _make_slowly(tmp, log), "test data")
    results.put((str(d), out.getvalue()))


def test_jobs_that_start_at_once_make_the_generated_data_once(tmp_path):
    """Two jobs on one machine (two users' runs, a sweep's cells) needing the same generated data at the same
    moment: one makes it, the other waits for it and uses it; neither sees a half-made or replaced directory."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    start, results = ctx.Barrier(2), ctx.Queue()
    jobs = [ctx.Process(target=_job, args=(tmp_path / "home", tmp_path / "log", start, results)) for _ in range(2)]
    for j in jobs:
        j.start()
    got = [results.get(timeout=60) for _ in jobs]
    for j in jobs:
        j.join(timeout=60)
        assert j.exitcode == 0
    assert (tmp_path / "log").read_text() == "made\n"  # made once
    assert {d for d, _ in got} == {str(tmp_path / "home/data-n3-s0")}
    said = sorted(o.strip() for _, o in got)
    assert said == [f"generating test data (3 samples) in {tmp_path / 'home/data-n3-s0'} (first use only)",
                    f"waiting for another job making {tmp_path / 'home/data-n3-s0'}"], said
    assert not (tmp_path / "home/data-n3-s0.partial").exists()


def test_a_file_system_without_locks_still_gets_its_generated_data(tmp_path, monkeypatch):
    import errno

    from genlip.run import dirs

    def no_locks(f, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(dirs.fcntl, "flock", no_locks)
    monkeypatch.setenv("GENLIP_HOME", str(tmp_path))
    d = dirs.generated_dir("$GENLIP_HOME/d-n{samples}-s{seed}", 3, 0, "info.json",
                           lambda tmp: _make_slowly(tmp, tmp_path / "log"), "test data")
    assert json.loads((d / "info.json").read_text()) == {"samples": 3, "seed": 0}


def test_genlip_home_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    from genlip.data.sources import DataError
    from genlip.run import dirs

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("GENLIP_HOME", str(tmp_path / "afile"))
    with pytest.raises(DataError, match=r"^cannot make .*afile for the generated data: "):
        dirs.generated_dir("$GENLIP_HOME/d-n{samples}-s{seed}", 3, 0, "info.json", lambda tmp: None, "test data")
