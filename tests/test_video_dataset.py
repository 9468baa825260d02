"""The video dataset on real encoded files: shapes, views, masks, bad files, determinism."""
import logging

import pytest
import torch

from datasets.annotations import Sample, read_annotations
from datasets.synthetic import make_dataset, write_broken_files
from datasets.video_dataset import (AugmentConfig, BadSampleTracker, ClipConfig, MaskConfig, VideoClipDataset,
                                    collate_clips)
from helpers import backend_params

CLIP = ClipConfig(num_frames=8, sampling_rate=2, input_size=32, short_side_size=32)
MASK = MaskConfig(mask_type="tube", mask_ratio=0.75, grid=(8 // 2, 32 // 16, 32 // 16))  # CLIP in 2x16x16 tubes


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_dataset(str(root), num_train=6, num_val=3, num_test=3, frames=24, height=48, width=64, seed=0)
    return str(root)


def _dataset(demo, mode, split="train", **kwargs):
    samples = read_annotations(f"{demo}/{split}.csv", demo, with_labels=mode != "pretrain")
    kwargs.setdefault("clip", CLIP)
    return VideoClipDataset(samples, mode, mask=MASK, **kwargs)


@pytest.mark.parametrize("backend", backend_params())
def test_pretrain_views_and_masks(demo, backend):
    ds = _dataset(demo, "pretrain", num_sample=2, video_backend=backend)
    item = ds[0]
    assert item["video"].shape == (2, 3, 8, 32, 32) and item["video"].dtype == torch.float32
    assert item["mask"].shape == (2, 4 * 2 * 2) and item["mask"].dtype == torch.bool
    assert (item["mask"].sum(1) == 4 * int(0.75 * 4)).all()
    assert not torch.equal(item["video"][0], item["video"][1])  # two augmentations of one decode
    assert item["bad"] == []


def test_train_val_labels_and_ids(demo):
    samples = read_annotations(f"{demo}/train.csv", demo)
    ds = _dataset(demo, "train", augment=AugmentConfig(auto_augment="rand-m7-n4-mstd0.5-inc1", reprob=0.5))
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (1, 3, 8, 32, 32)
        assert item["label"].tolist() == [samples[i].label] and item["index"].tolist() == [i]
    val = _dataset(demo, "val", split="val")
    torch.testing.assert_close(val[1]["video"], val[1]["video"])  # deterministic centre view


@pytest.mark.parametrize("segments,crops", [(2, 3), (1, 1), (3, 1)])
@pytest.mark.parametrize("sampling", ["dense", "segment"])
def test_test_views(demo, segments, crops, sampling):
    clip = ClipConfig(num_frames=8, sampling_rate=2, sampling=sampling, input_size=32, short_side_size=32)
    ds = _dataset(demo, "test", split="test", clip=clip, test_num_segment=segments, test_num_crop=crops)
    assert len(ds) == 3 * segments
    item = ds[len(ds) - 1]
    assert item["video"].shape == (crops, 3, 8, 32, 32)
    assert item["index"].tolist() == [2] * crops
    assert item["segment"].tolist() == [segments - 1] * crops
    assert item["crop"].tolist() == list(range(crops))
    if crops == 3:  # a 48x64 frame resized to 32x42: left, centre and right crops differ
        assert not torch.equal(item["video"][0], item["video"][2])


def test_collate_flattens_views(demo):
    ds = _dataset(demo, "pretrain", num_sample=2)
    batch = collate_clips([ds[0], ds[1], ds[2]])
    assert batch["video"].shape == (6, 3, 8, 32, 32) and batch["mask"].shape == (6, 16)
    assert batch["num_items"] == 3 and batch["bad"] == []


def test_backends_agree(demo):
    a = _dataset(demo, "val", split="val", video_backend="decord")[0]["video"]
    b = _dataset(demo, "val", split="val", video_backend="pyav")[0]["video"]
    assert (a - b).abs().mean() < 0.05


def test_other_containers_and_codecs(tmp_path):
    for codec in ("vp9", "mpeg4"):
        root = tmp_path / codec
        make_dataset(str(root), num_train=2, num_val=1, num_test=1, frames=16, height=48, width=64, codec=codec)
        for backend in ("decord", "pyav"):
            item = _dataset(str(root), "val", split="val", video_backend=backend)[0]
            assert item["bad"] == [] and item["video"].shape == (1, 3, 8, 32, 32)


def test_determinism_epochs_and_workers(demo):
    ds = _dataset(demo, "pretrain")
    first = ds[3]
    torch.testing.assert_close(ds[3]["video"], first["video"])
    assert torch.equal(ds[3]["mask"], first["mask"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["video"], first["video"])
    ds.set_epoch(0)
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=collate_clips,
                                             persistent_workers=workers > 0)
        ds.set_epoch(0)
        epoch0 = [b["video"] for b in loader]
        ds.set_epoch(1)  # reaches persistent workers too
        epoch1 = [b["video"] for b in loader]
        batches[workers] = (torch.cat(epoch0), torch.cat(epoch1))
    torch.testing.assert_close(batches[0][0], batches[2][0])
    torch.testing.assert_close(batches[0][1], batches[2][1])
    assert not torch.equal(batches[0][0], batches[0][1])


@pytest.fixture(scope="module")
def broken(demo):
    return write_broken_files(demo)


@pytest.mark.parametrize("backend", backend_params())
def test_every_bad_kind_is_reported_and_replaced(demo, broken, backend):
    good = read_annotations(f"{demo}/train.csv", demo)
    samples = [Sample(f"{demo}/{rel}", 0) for rel in broken.values()] + good
    ds = VideoClipDataset(samples, "train", CLIP, AugmentConfig(auto_augment=None, reprob=0), video_backend=backend,
                          min_video_frames=4)
    for i, kind in enumerate(broken):
        item = ds[i]
        assert item["bad"], f"{kind} was not reported"
        path, reason = item["bad"][0]
        assert path.endswith(broken[kind]) and reason
        assert item["index"].item() != i and item["video"].shape == (1, 3, 8, 32, 32)
        torch.testing.assert_close(ds[i]["video"], item["video"])  # the replacement is deterministic
    reasons = {kind: ds[i]["bad"][0][1] for i, kind in enumerate(broken)}
    assert reasons["missing"] == "missing" and reasons["empty"] == "empty file"
    assert reasons["too_short"].startswith("too short")


def test_tracker_logs_once_counts_and_stops(demo, broken, caplog):
    samples = [Sample(f"{demo}/{broken['garbage']}", 0)] + read_annotations(f"{demo}/train.csv", demo)
    ds = VideoClipDataset(samples, "val", CLIP)
    tracker = BadSampleTracker(max_bad_fraction=0.2)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # the same bad file twice in one epoch: one warning, one count
            tracker.update(collate_clips([ds[0], ds[1]]))
    assert sum("unreadable video" in r.message for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match=r"1 of 4 samples .* --max_bad_fraction 0.2; e.g. .*garbage"):
        tracker.end_epoch()
    tracker = BadSampleTracker(max_bad_fraction=0.5)
    tracker.update(collate_clips([ds[0], ds[1]]))
    assert tracker.end_epoch() == {"bad_samples": 1, "bad_fraction": pytest.approx(1 / 2)}
    tracker.start_epoch()  # a new epoch counts it again
    tracker.update(collate_clips([ds[0], ds[1], ds[2]]))
    assert tracker.end_epoch()["bad_samples"] == 1 and list(tracker.left_out()) == [samples[0].path]


def test_one_bad_file_of_four_is_one_of_four_with_workers(demo, broken):
    """However many items' retries draw the bad file (here every item that misses draws again from
    four files), it counts once: 1 of 4, with DataLoader workers (persistent ones too)."""
    good = read_annotations(f"{demo}/train.csv", demo)[:3]
    samples = [Sample(f"{demo}/{broken['garbage']}", 0)] + good
    ds = VideoClipDataset(samples, "train", CLIP, AugmentConfig(auto_augment=None, reprob=0))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, persistent_workers=True,
                                         collate_fn=collate_clips)
    tracker = BadSampleTracker(max_bad_fraction=0.25, epoch_size=len(ds))
    for epoch in range(2):
        ds.set_epoch(epoch)
        tracker.start_epoch()
        met = 0
        for _ in range(3):  # epochs over the same file list: the bad file is met by several retries
            for batch in loader:
                met += len(batch["bad"])
                tracker.update(batch)
        assert met >= 3
        assert tracker.end_epoch() == {"bad_samples": 1, "bad_fraction": pytest.approx(1 / 12)}


def test_tracker_fails_early_when_certain():
    tracker = BadSampleTracker(max_bad_fraction=0.1, epoch_size=10)
    tracker.update({"bad": [("x.mp4", "missing")] * 3, "num_items": 1})  # one file, three retries: 1 of 10
    with pytest.raises(RuntimeError, match="2 of 10 samples"):
        tracker.update({"bad": [("y.mp4", "missing")], "num_items": 1})


def test_a_file_only_decord_reads_is_a_reader_problem(demo, monkeypatch, caplog):
    import datasets.decoding as decoding

    def refuse(self, indices):
        raise decoding.VideoError(self.path, "decoding failed (PyAV says no)", decoder_failed=True)

    monkeypatch.setattr(decoding.PyAVReader, "get_frames", refuse)
    samples = read_annotations(f"{demo}/val.csv", demo)
    item = VideoClipDataset(samples, "val", CLIP, video_backend="pyav", max_retries=1)
    with pytest.raises(RuntimeError, match="use --video_backend decord"):
        item[0]
    bad = {"bad": [(samples[0].path, f"{decoding.READER_PROBLEM}the pyav reader fails (x) but decord reads the "
                                     f"file: use --video_backend decord")], "num_items": 1}
    tracker = BadSampleTracker(max_bad_fraction=1.0)
    with caplog.at_level(logging.WARNING):
        tracker.update(bad)
    assert "unreadable" not in caplog.text and "use --video_backend decord" in caplog.text
    with pytest.raises(decoding.VideoError, match="pyav reader fails .*PyAV says no.* decord reads"):
        decoding.read_video(samples[0].path, "pyav", lambda reader: reader.get_frames([0]))


def test_no_readable_video_is_an_error(demo, broken):
    samples = [Sample(f"{demo}/{rel}", 0) for rel in broken.values()]
    ds = VideoClipDataset(samples, "val", CLIP, max_retries=5)
    with pytest.raises(RuntimeError, match="no readable video in 6 tries"):
        ds[0]


def test_decord_failures_fall_back_to_pyav(demo, broken, monkeypatch):
    import datasets.decoding as decoding

    def refuse(self, path, num_threads=1, short_side=None):
        raise decoding.VideoError(path, "cannot open (decord says no)", decoder_failed=True)

    monkeypatch.setattr(decoding.DecordReader, "__init__", refuse)
    ds = _dataset(demo, "val", split="val", video_backend="decord")
    item = ds[0]
    assert item["bad"] == [] and item["index"].tolist() == [0]  # read by PyAV instead
    samples = [Sample(f"{demo}/{broken['garbage']}", 0)] + read_annotations(f"{demo}/val.csv", demo)
    path, reason = VideoClipDataset(samples, "val", CLIP, video_backend="decord")[0]["bad"][0]
    assert reason.startswith("cannot open (decord says no); PyAV: cannot open")
