"""Readers and the data stream: every record exactly once per epoch across ranks and workers, counted skips,
weighted mixing, exact resume."""

import gzip
import io
import re
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

import genlip.data.dataset as dataset_mod
import genlip.data.sources as sources_mod
from genlip.data.dataset import ExampleBuilder, PretrainStream
from genlip.data.decode import SkipSample, SkipStats, caption_from_record, decode_image
from genlip.data.sources import DataError, SourceSpec, SourceStream, expand_paths, read_wds_shard
from tests.datagen import caption_of, png, write_jsonl, write_parquet, write_wds


class IndexBuilder(ExampleBuilder):
    """Keeps the sample index from the caption instead of tensors, so tests can see exactly what was read."""

    def build(self, image, caption):
        return {"index": int(re.search(r"number (\d+)", caption).group(1)), "size": image.size}

    def collate(self, examples):
        return {"index": torch.tensor([e["index"] for e in examples])}


def _shards(tmp_path, n_shards=4, per=5, bad=None):
    for s in range(n_shards):
        write_wds(tmp_path / f"shard-{s:02d}.tar", range(s * per, (s + 1) * per), bad)
    return str(tmp_path / f"shard-{{00..{n_shards - 1:02d}}}.tar")


def _read(stream: SourceStream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_brace_expansion_and_missing_files(tmp_path):
    pattern = _shards(tmp_path, 3)
    assert [p.rsplit("/", 1)[1] for p in expand_paths(pattern)] == ["shard-00.tar", "shard-01.tar", "shard-02.tar"]
    with pytest.raises(DataError, match="no file matches"):
        expand_paths(str(tmp_path / "nope-{0..1}.tar"))


@pytest.mark.parametrize("n_shards,n_streams", [(4, 2), (4, 4), (2, 4), (3, 2)])
def test_one_epoch_visits_every_record_once_across_streams(tmp_path, n_shards, n_streams):
    pattern = _shards(tmp_path, n_shards)
    spec = SourceSpec(path=pattern)
    seen = []
    for k in range(n_streams):
        st = SourceStream(spec, k, n_streams, seed=3, on_error=lambda *a: None)
        for where, _ in iter(st):
            if st.epoch > 0:
                break
            seen.append(where.rsplit(":", 1)[1])
    assert sorted(seen) == [f"{i:06d}" for i in range(n_shards * 5)]


def test_epochs_reshuffle_shard_order(tmp_path):
    spec = SourceSpec(path=_shards(tmp_path, 6, per=1))
    st = SourceStream(spec, 0, 1, seed=0, on_error=lambda *a: None)
    recs = [w.rsplit(":", 1)[1] for w, _ in _read(st, 12)]
    assert sorted(recs[:6]) == sorted(recs[6:]) and recs[:6] != recs[6:]


def test_truncated_tar_keeps_what_was_read_and_counts(tmp_path):
    path = write_wds(tmp_path / "t.tar", range(20))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    errors = []
    st = SourceStream(SourceSpec(path=str(path)), 0, 1, seed=0, on_error=lambda r, w: errors.append(r))
    got = []
    for _, rec in iter(st):
        if st.epoch > 0:
            break
        got.append(rec)
    assert 5 < len(got) < 20
    assert "truncated_shard" in errors


def test_parquet_bytes_and_paths_and_jsonl(tmp_path):
    (tmp_path / "imgs").mkdir()
    write_parquet(tmp_path / "a.parquet", range(7))
    write_parquet(tmp_path / "b.parquet", range(7, 14), image_root=tmp_path / "imgs")
    write_jsonl(tmp_path / "c.jsonl", range(14, 18), tmp_path / "jimgs")
    sources = [SourceSpec(path=str(tmp_path / "a.parquet"), type="parquet"),
               SourceSpec(path=str(tmp_path / "b.parquet"), type="parquet", image_root=str(tmp_path / "imgs")),
               SourceSpec(path=str(tmp_path / "c.jsonl"), type="jsonl", image_root=str(tmp_path / "jimgs"))]
    for spec, expect in zip(sources, (range(7), range(7, 14), range(14, 18))):
        ds = PretrainStream([spec], IndexBuilder(), batch_size=len(expect))
        batch = next(iter(ds))
        assert sorted(batch["index"].tolist()) == list(expect)


def test_parquet_resume_mid_row_group(tmp_path):
    write_parquet(tmp_path / "a.parquet", range(10))
    spec = SourceSpec(path=str(tmp_path / "a.parquet"), type="parquet")
    st = SourceStream(spec, 0, 1, seed=0, on_error=lambda *a: None)
    first = [w for w, _ in _read(st, 4)]
    st2 = SourceStream(spec, 0, 1, seed=0, on_error=lambda *a: None)
    st2.load_state(st.state())
    rest = [w for w, _ in _read(st2, 6)]
    assert [w.rsplit(":", 1)[1] for w in first + rest] == [f"{i:06d}" for i in range(10)]


def test_skips_are_counted_by_reason_and_reported(tmp_path):
    pattern = _shards(tmp_path, 2, per=10, bad={3: "corrupt", 4: "empty_caption", 12: "tiny"})
    ds = PretrainStream([SourceSpec(path=pattern)], IndexBuilder(), batch_size=17, max_skip_fraction=0.5)
    batch = next(iter(ds))
    stats = SkipStats.from_dict(batch["_state"]["stats"])
    assert stats.seen == 20 and dict(stats.skipped) == {"corrupt_image": 1, "empty_caption": 1, "too_small": 1}
    assert sorted(batch["index"].tolist()) == sorted(set(range(20)) - {3, 4, 12})


def test_too_many_skips_stop_the_run_naming_source_and_key(tmp_path):
    pattern = _shards(tmp_path, 1, per=10, bad={i: "corrupt" for i in range(0, 10, 2)})
    ds = PretrainStream([SourceSpec(path=pattern, name="webdocs")], IndexBuilder(), batch_size=8,
                        max_skip_fraction=0.2, min_seen_for_check=5)
    with pytest.raises(DataError, match=r"webdocs:shard-00.tar:0000\d\d.*corrupt_image"):
        next(iter(ds))


def test_weighted_mixing_follows_weights(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_wds(a / "x.tar", range(0, 50))
    write_wds(b / "x.tar", range(1000, 1050))
    ds = PretrainStream([SourceSpec(path=str(a / "x.tar"), weight=3.0, name="a"),
                         SourceSpec(path=str(b / "x.tar"), weight=1.0, name="b")], IndexBuilder(), batch_size=200)
    idx = next(iter(ds))["index"]
    frac_a = (idx < 1000).float().mean().item()
    assert 0.68 < frac_a < 0.82


def test_a_mix_counts_reads_and_skips_by_source(tmp_path):
    """In a weighted mix every read and skip is also counted under its source's name (a clean source shows none),
    the counts add up to the totals, survive to_dict/from_dict and merge over streams, and the stop names them."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_wds(a / "x.tar", range(0, 40))
    write_wds(b / "x.tar", range(1000, 1040), bad={1003: "corrupt", 1007: "tiny", 1011: "empty_caption",
                                                   **{i: "corrupt" for i in range(1020, 1040, 3)}})
    specs = [SourceSpec(path=str(a / "x.tar"), weight=1.0, name="clean"),
             SourceSpec(path=str(b / "x.tar"), weight=1.0, name="dirty")]
    batch = next(iter(PretrainStream(specs, IndexBuilder(), batch_size=60, max_skip_fraction=0.5)))
    stats = SkipStats.from_dict(batch["_state"]["stats"])
    idx = batch["index"]
    assert dict(stats.by_source["clean"]) == {"seen": int((idx < 1000).sum())}
    dirty = stats.by_source["dirty"]
    assert {k: v for k, v in dirty.items() if k != "seen"} == dict(stats.skipped) != {}
    assert dirty["seen"] == int((idx >= 1000).sum()) + stats.n_skipped
    assert stats.by_source["clean"]["seen"] + dirty["seen"] == stats.seen
    summary = stats.source_summary()
    assert summary.startswith("clean: 0 of ") and f"dirty: {stats.n_skipped} of {dirty['seen']} read" in summary
    both = stats.merge(SkipStats.from_dict(stats.to_dict()))
    assert both.by_source["dirty"] == dirty + dirty and both.seen == 2 * stats.seen
    # one source: no breakdown (it would repeat the totals)
    one = SkipStats.from_dict(next(iter(PretrainStream(specs[1:], IndexBuilder(), batch_size=20,
                                                       max_skip_fraction=0.5)))["_state"]["stats"])
    assert one.n_skipped and one.by_source == {} and one.source_summary() == ""
    with pytest.raises(DataError, match=r"by source: clean: 0 of \d+ read; dirty: [1-9]\d* of \d+ read \{"):
        next(iter(PretrainStream(specs, IndexBuilder(), batch_size=60, max_skip_fraction=0.01,
                                 min_seen_for_check=20)))


def test_a_broken_source_of_small_weight_stops_the_run(tmp_path):
    """Every record of a source at a tenth of the mix is bad: the stream's share (~9%) stays under max_skip_fraction
    (20%), but the source's own share (100%) does not, once the source has read skip_check_after records."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_wds(a / "x.tar", range(0, 200))
    write_wds(b / "x.tar", range(1000, 1100), bad={i: "corrupt" for i in range(1000, 1100)})
    specs = [SourceSpec(path=str(a / "x.tar"), weight=10.0, name="web"),
             SourceSpec(path=str(b / "x.tar"), weight=1.0, name="docs")]
    with pytest.raises(DataError) as e:
        next(iter(PretrainStream(specs, IndexBuilder(), batch_size=150, max_skip_fraction=0.2, min_seen_for_check=8)))
    msg = str(e.value)
    assert msg.startswith("8 of 8 records of source 'docs' skipped (100.0% > max_skip_fraction 20.0%) in stream 0")
    assert "by source: docs: 8 of 8 read {'corrupt_image': 8}; web: 0 of " in msg and "docs:x.tar:" in msg
    # one source with a share of bad records under the limit (10%, in a bad run of 4): trains, the stream decides
    write_wds(b / "y.tar", range(2000, 2100), bad={i: "corrupt" for i in range(2004, 2100, 10)})
    one = PretrainStream([SourceSpec(path=str(b / "y.tar"), name="docs")], IndexBuilder(), batch_size=80,
                         max_skip_fraction=0.2, min_seen_for_check=8)
    stats = SkipStats.from_dict((batch := next(iter(one)))["_state"]["stats"])
    assert len(batch["index"]) == 80 and stats.n_skipped >= 8 and stats.by_source == {}


def test_resuming_a_mix_saved_before_counts_by_source_keeps_the_sums(tmp_path):
    """A checkpoint's stream stats from before reads were counted by source: what was read then is kept under its
    own name, so the sources still add up to the totals."""
    from genlip.data.dataset import EARLIER

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_wds(a / "x.tar", range(0, 40))
    write_wds(b / "x.tar", range(1000, 1040), bad={1001: "corrupt", 1009: "tiny"})
    specs = [SourceSpec(path=str(a / "x.tar"), name="clean"), SourceSpec(path=str(b / "x.tar"), name="dirty")]
    state = next(iter(PretrainStream(specs, IndexBuilder(), batch_size=10, max_skip_fraction=0.9)))["_state"]
    old = {k: v for k, v in state["stats"].items() if k != "by_source"}
    resumed = PretrainStream(specs, IndexBuilder(), batch_size=10, max_skip_fraction=0.9,
                             resume={"0": {**state, "stats": old}})
    stats = SkipStats.from_dict(next(iter(resumed))["_state"]["stats"])
    assert stats.by_source[EARLIER]["seen"] == old["seen"] > 0
    assert sum(c["seen"] for c in stats.by_source.values()) == stats.seen > old["seen"]
    assert sum(n for c in stats.by_source.values() for k, n in c.items() if k != "seen") == stats.n_skipped


def test_stream_resume_continues_exactly(tmp_path):
    pattern = _shards(tmp_path, 3, per=7, bad={5: "corrupt"})
    specs = [SourceSpec(path=pattern, name="s")]
    full = PretrainStream(specs, IndexBuilder(), batch_size=4, seed=1)
    it = iter(full)
    ref = [next(it)["index"].tolist() for _ in range(10)]  # crosses an epoch boundary
    part = iter(PretrainStream(specs, IndexBuilder(), batch_size=4, seed=1))
    for _ in range(4):
        b = next(part)
    resumed = iter(PretrainStream(specs, IndexBuilder(), batch_size=4, seed=1, resume={"0": b["_state"]}))
    assert [next(resumed)["index"].tolist() for _ in range(6)] == ref[4:]


def test_ranks_and_workers_partition_the_data(tmp_path):
    """2 ranks x 2 dataloader workers = 4 streams; one epoch = every record once."""
    from genlip.data.dataset import make_loader

    pattern = _shards(tmp_path, 8, per=4)
    seen = Counter()
    for rank in range(2):
        ds = PretrainStream([SourceSpec(path=pattern)], IndexBuilder(), batch_size=4, rank=rank, world_size=2,
                            num_workers=2)
        it = iter(make_loader(ds, 2))
        for _ in range(4):  # 32 records / 4 streams / 4 per batch = 2 batches per stream, 4 per rank
            seen.update(next(it)["index"].tolist())
    assert sorted(seen) == list(range(32)) and set(seen.values()) == {1}


# --- where a tar shard ends: a complete shard reads whole and clean, a cut one counts once as truncated_shard ---

def _pairs_shard(path, n=6, writer="webdataset", fmt=tarfile.PAX_FORMAT, key=lambda i: f"{i:06d}"):
    """``n`` records of an image and a caption only (no JSON to fall back on), written by webdataset's TarWriter
    or by Python's tarfile in ``fmt``."""
    if writer == "webdataset":
        from webdataset import TarWriter

        with open(path, "wb") as f, TarWriter(f, mtime=0.0) as tw:
            for i in range(n):
                tw.write({"__key__": key(i), "png": png(), "txt": caption_of(i)})
        return path
    with tarfile.open(path, "w", format=fmt) as tf:
        for i in range(n):
            for ext, data in (("png", png()), ("txt", caption_of(i).encode())):
                ti = tarfile.TarInfo(f"{key(i)}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return path


def _member(path, name) -> tarfile.TarInfo:
    with tarfile.open(path) as tf:
        return tf.getmember(name)


def _read_epoch(path):
    """Indices of the records one epoch yields through caption and image decoding, and every reason counted."""
    reasons, got = Counter(), []
    spec = SourceSpec(path=str(path))
    st = SourceStream(spec, 0, 1, seed=0, on_error=lambda reason, where: reasons.update([reason]))
    for _, rec in st:
        if st.epoch > 0:
            break
        try:
            caption = caption_from_record(rec, spec.caption_fields)
            decode_image(rec["image"])
        except SkipSample as e:
            reasons[e.reason] += 1
            continue
        got.append(int(re.search(r"number (\d+)", caption).group(1)))
    return got, reasons


@pytest.mark.parametrize("writer,fmt", [("webdataset", None), ("tarfile", tarfile.USTAR_FORMAT),
                                        ("tarfile", tarfile.GNU_FORMAT), ("tarfile", tarfile.PAX_FORMAT)])
def test_complete_shards_read_whole_with_nothing_counted(tmp_path, writer, fmt):
    path = _pairs_shard(tmp_path / "s.tar", writer=writer, fmt=fmt)
    assert _read_epoch(path) == (list(range(6)), Counter())


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_member_names_are_read_whole(tmp_path, fmt):
    """Keys past the 100-byte ustar name field go in a GNU long-name or a pax member."""
    key = lambda i: f"{'d' * 70}/{'k' * 80}-{i:06d}"  # noqa: E731
    path = _pairs_shard(tmp_path / "s.tar", writer="tarfile", fmt=fmt, key=key)
    recs = list(read_wds_shard(str(path), lambda *a: pytest.fail(f"counted {a}")))
    assert [k for k, _ in recs] == [key(i) for i in range(6)]
    assert all(set(r) == {"image", "txt"} and r["image"] == png() for _, r in recs)


def test_padding_after_the_end_marker_is_not_needed(tmp_path):
    """Two zero blocks end the archive; the zeros that pad the file to a 10 KiB record may be missing."""
    path = _pairs_shard(tmp_path / "s.tar", n=3, writer="tarfile", fmt=tarfile.USTAR_FORMAT)
    data = path.read_bytes()
    end = _member(path, "000002.txt").offset_data + 512  # the caption fits one block
    assert data[end:] == bytes(len(data) - end) and len(data) - end > 1024
    path.write_bytes(data[: end + 1024])
    assert _read_epoch(path) == ([0, 1, 2], Counter())


def _cut(path, at):
    path.write_bytes(path.read_bytes()[:at])
    return path


def test_cut_on_a_block_boundary_after_a_complete_member(tmp_path):
    """An interrupted copy: the file ends right after record 3's image, where record 3's caption header starts."""
    path = _pairs_shard(tmp_path / "s.tar")
    at = _member(path, "000003.txt").offset  # its pax header, then its ustar header
    assert at % 512 == 0
    assert _read_epoch(_cut(path, at)) == ([0, 1, 2], Counter({"truncated_shard": 1}))


def test_cut_at_the_end_marker_is_seen(tmp_path):
    """Every member is there but the end-of-archive marker is not: the last record is not known to be whole."""
    path = _pairs_shard(tmp_path / "s.tar", writer="tarfile", fmt=tarfile.USTAR_FORMAT)
    at = _member(path, "000005.txt").offset_data + 512
    assert _read_epoch(_cut(path, at)) == ([0, 1, 2, 3, 4], Counter({"truncated_shard": 1}))


@pytest.mark.parametrize("writer,fmt", [("webdataset", None), ("tarfile", tarfile.USTAR_FORMAT)])
def test_cut_inside_a_member_header(tmp_path, writer, fmt):
    path = _pairs_shard(tmp_path / "s.tar", writer=writer, fmt=fmt)
    at = _member(path, "000003.txt").offset + 200
    assert _read_epoch(_cut(path, at)) == ([0, 1, 2], Counter({"truncated_shard": 1}))


def test_cut_inside_a_caption_counts_once(tmp_path):
    """Record 3 loses its caption: the cut is counted, and record 3 is neither yielded nor counted again."""
    path = _pairs_shard(tmp_path / "s.tar")
    at = _member(path, "000003.txt").offset_data + 20
    assert _read_epoch(_cut(path, at)) == ([0, 1, 2], Counter({"truncated_shard": 1}))


def test_cut_inside_an_image(tmp_path):
    path = _pairs_shard(tmp_path / "s.tar")
    at = _member(path, "000003.png").offset_data + 30
    assert _read_epoch(_cut(path, at)) == ([0, 1, 2], Counter({"truncated_shard": 1}))


def test_resume_inside_a_cut_shard_counts_the_cut_once(tmp_path):
    path = _cut(_pairs_shard(tmp_path / "s.tar"), _member(tmp_path / "s.tar", "000003.txt").offset_data + 20)
    reasons = []
    spec = SourceSpec(path=str(path))
    st = SourceStream(spec, 0, 1, seed=0, on_error=lambda reason, where: reasons.append(reason))
    first = [w for w, _ in _read(st, 2)]
    st2 = SourceStream(spec, 0, 1, seed=0, on_error=lambda reason, where: reasons.append(reason))
    st2.load_state(st.state())
    rest = [w for w, _ in _read(st2, 2)]  # record 2, then the next epoch's record 0
    assert [w.rsplit(":", 1)[1] for w in first + rest] == ["000000", "000001", "000002", "000000"]
    assert reasons == ["truncated_shard"]


def test_a_header_that_is_not_one_counts_as_corrupt(tmp_path):
    """Record 3's first header is garbage: record 2 is not known to be whole (that header could have been its)."""
    path = _pairs_shard(tmp_path / "s.tar", writer="tarfile", fmt=tarfile.USTAR_FORMAT)
    data = bytearray(path.read_bytes())
    at = _member(path, "000003.png").offset
    data[at:at + 512] = b"<html>not found</html>".ljust(512, b" ")
    path.write_bytes(bytes(data))
    assert _read_epoch(path) == ([0, 1], Counter({"corrupt_shard": 1}))


def test_a_member_repeated_in_a_record_counts_as_corrupt(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in (("0.png", png()), ("0.txt", caption_of(0).encode()), ("1.png", png()),
                           ("1.txt", caption_of(1).encode()), ("1.TXT", b"another caption")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    assert _read_epoch(path) == ([0], Counter({"corrupt_shard": 1}))


def test_gzipped_shard_complete_and_cut(tmp_path):
    raw = _pairs_shard(tmp_path / "s.tar").read_bytes()
    whole = tmp_path / "whole.tar.gz"
    whole.write_bytes(gzip.compress(raw))
    assert _read_epoch(whole) == (list(range(6)), Counter())
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) * 2 // 3])
    got, reasons = _read_epoch(cut)
    assert got == list(range(len(got))) and len(got) < 6 and reasons == Counter({"truncated_shard": 1})


def test_empty_file_is_a_cut_shard(tmp_path):
    path = tmp_path / "s.tar"
    path.write_bytes(b"")
    reasons = []
    assert list(read_wds_shard(str(path), lambda reason, where: reasons.append(reason))) == []
    assert reasons == ["truncated_shard"]


class HoldOneBuilder(IndexBuilder):
    """Emits each batch without its newest example, which waits for the next one (a packer's buffer in small)."""

    def batches(self, examples, batch_size, restored=None):
        buf = list(restored or [])
        for e in examples:
            buf.append(e)
            if len(buf) == batch_size + 1:
                yield self.collate(buf[:-1]), [buf[-1]["_pos"]]
                buf = buf[-1:]


def test_resume_rebuilding_held_back_examples_does_not_count_a_cut_again(tmp_path):
    """The example held back at the checkpoint is the first one after a cut; rebuilding it reads past the cut."""
    path = _cut(_pairs_shard(tmp_path / "s.tar"), _member(tmp_path / "s.tar", "000003.txt").offset_data + 20)
    specs = [SourceSpec(path=str(path), name="s")]
    full = iter(PretrainStream(specs, HoldOneBuilder(), batch_size=3))
    ref = [next(full) for _ in range(3)]
    assert [b["index"].tolist() for b in ref] == [[0, 1, 2]] * 3
    assert [b["_state"]["stats"]["skipped"] for b in ref] == [{"truncated_shard": n} for n in (1, 2, 3)]
    resumed = iter(PretrainStream(specs, HoldOneBuilder(), batch_size=3, resume={"0": ref[0]["_state"]}))
    for want in ref[1:]:
        got = next(resumed)
        assert got["index"].tolist() == want["index"].tolist()
        assert got["_state"]["stats"] == want["_state"]["stats"]


def test_stream_expands_its_file_patterns_once(tmp_path, monkeypatch):
    """A paper-scale pattern names ~100K shards: the stream globs them when built, not again per stream or for
    every held-back record rebuilt on resume."""
    pattern = _shards(tmp_path, 3, per=7)
    specs = [SourceSpec(path=pattern, name="s")]
    full = iter(PretrainStream(specs, HoldOneBuilder(), batch_size=3))
    ref = [next(full) for _ in range(4)]
    assert ref[0]["_state"]["pending"]  # the resume below rebuilds a held-back record
    resumed_ds = PretrainStream(specs, HoldOneBuilder(), batch_size=3, resume={"0": ref[0]["_state"]})
    calls = []

    def counting(p):
        calls.append(p)
        raise AssertionError("expanded again")

    monkeypatch.setattr(sources_mod, "expand_paths", counting)
    monkeypatch.setattr(dataset_mod, "expand_paths", counting)
    resumed = iter(resumed_ds)
    assert [next(resumed)["index"].tolist() for _ in range(3)] == [b["index"].tolist() for b in ref[1:]]
    assert calls == []
    with pytest.raises(ValueError, match="2 file lists for 1 sources"):
        PretrainStream(specs, HoldOneBuilder(), batch_size=3, units=[[pattern], [pattern]])


def test_a_source_that_gives_nothing_names_its_files_and_the_last_problem(tmp_path):
    (tmp_path / "a.tar").write_text("a text file, not a tar archive\n")
    st = SourceStream(SourceSpec(path=str(tmp_path / "*.tar"), name="mine"), 0, 1, seed=0, on_error=lambda *a: None)
    with pytest.raises(DataError, match=r"source 'mine' yields no records for stream 0 of 1: its 1 of 1 files "
                                        r"\(a\.tar\) gave none; the last problem: truncated_shard \("):
        next(iter(st))


def test_a_stream_left_with_only_a_bad_file_says_how_to_read_every_file(tmp_path):
    """Two streams, a good parquet file and a junk one: split auto deals one file to each stream per epoch, so a
    stream dealt the junk file twice in a row has nothing (found by a user under torchrun); its error says so and
    what to do, and `split: sample` reads on."""
    write_parquet(tmp_path / "good.parquet", range(6))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    spec = SourceSpec(path=str(tmp_path / "*.parquet"), type="parquet", name="pq")

    def junk_twice(seed: int, stream: int) -> bool:
        st = SourceStream(spec, stream, 2, seed=seed, on_error=lambda *a: None)
        return all([Path(u).name for u in st._my_units(e)] == ["junk.parquet"] for e in (0, 1))
    seed, stream = next((s, r) for s in range(100) for r in range(2) if junk_twice(s, r))
    with pytest.raises(DataError) as e:
        _read(SourceStream(spec, stream, 2, seed=seed, on_error=lambda *a: None), 3)
    assert "its 1 of 2 files (junk.parquet) gave none" in str(e.value)
    assert str(e.value).endswith("give the source `split: sample` to have every stream read every file")
    sample = SourceSpec(path=str(tmp_path / "*.parquet"), type="parquet", name="pq", split="sample")
    assert len(_read(SourceStream(sample, stream, 2, seed=seed, on_error=lambda *a: None), 3)) == 3


def test_the_skipped_share_counts_records_not_unreadable_shards():
    stats = SkipStats(seen=4, skipped=Counter({"unreadable_shard": 9, "truncated_shard": 3, "corrupt_shard": 2,
                                               "corrupt_image": 1}))
    assert stats.n_skipped == 15 and stats.n_records_skipped == 1 and stats.fraction() == 0.25


def test_files_that_are_not_parquet_count_once_each_and_not_as_records(tmp_path):
    """Seven junk files beside two good parquet files: each junk file is one corrupt_shard per read, and they do not
    push the share of bad records over max_skip_fraction (found by a user: 21 of 201 "records" skipped)."""
    for i in range(2):
        write_parquet(tmp_path / f"good{i}.parquet", range(i * 100, i * 100 + 100))
    for i in range(7):
        (tmp_path / f"junk{i}.parquet").write_bytes(b"not parquet")
    ds = PretrainStream([SourceSpec(path=str(tmp_path / "*.parquet"), type="parquet")], IndexBuilder(),
                        batch_size=250, max_skip_fraction=0.01, min_seen_for_check=5)
    stats = SkipStats.from_dict(next(iter(ds))["_state"]["stats"])
    assert stats.skipped["corrupt_shard"] >= 7 and stats.n_records_skipped == 0 and stats.seen >= 200


def test_jsonl_lines_that_are_not_utf8_are_skipped_and_counted(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", range(4), tmp_path / "imgs")
    lines = (tmp_path / "c.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"caption": "', b'"caption": "caf\xe9 ')  # latin-1, not UTF-8
    (tmp_path / "c.jsonl").write_bytes(b"".join(lines))
    records = list(sources_mod._read_jsonl(str(tmp_path / "c.jsonl"), SourceSpec(path="x", type="jsonl"), None))
    assert [r.get("__bad__", "").split(":")[0] for _, r in records] == ["", "bad_metadata", "", ""]
    assert "not UTF-8" in records[1][1]["__bad__"] and all("\ufffd" not in str(r) for _, r in records)


@pytest.mark.parametrize("bad,words", [({"caption_fields": []}, "caption_fields must name at least one field"),
                                       ({"weight": float("nan")}, "weight must be positive and finite"),
                                       ({"weight": 0}, "weight must be positive")])
def test_a_source_without_caption_fields_or_with_a_bad_weight_is_refused(bad, words):
    with pytest.raises(ValueError, match=words):
        SourceSpec(path="x.tar", **bad)
