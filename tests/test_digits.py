"""The moving-digits data set: labels, split pools, byte-identical files for a seed."""
import os

import av
import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the moving-digits data set needs scikit-learn (requirements-test.txt)")

from datasets.annotations import read_annotations  # noqa: E402
from datasets.digits import (LABELLINGS, load_digit_images, make_digits_dataset, render_digits,  # noqa: E402
                             split_pools, upsample)

SMALL = dict(num_train=8, num_val=4, num_test=0, frames=8, size=32)


def _files(root: str) -> dict:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_same_seed_same_bytes_other_seed_other_videos(tmp_path):
    a = make_digits_dataset(str(tmp_path / "a"), seed=3, **SMALL)
    make_digits_dataset(str(tmp_path / "b"), seed=3, **SMALL)
    make_digits_dataset(str(tmp_path / "c"), seed=4, **SMALL)
    files_a, files_b, files_c = (_files(str(tmp_path / n)) for n in "abc")
    assert files_a == files_b
    assert files_a["videos/train/00000.mp4"] != files_c["videos/train/00000.mp4"]
    assert len([k for k in files_a if k.endswith(".mp4")]) == 12
    # Every labelling reads through the ordinary annotation reader, one label per video.
    for labelling in LABELLINGS:
        samples = read_annotations(a[labelling]["train"], a["root"], nb_classes=len(a[labelling]["classes"]))
        assert [s.path for s in samples] == [os.path.join(a["root"], f"videos/train/{i:05d}.mp4") for i in range(8)]
    digits = [s.label for s in read_annotations(a["digit"]["train"], a["root"])]
    directions = [s.label for s in read_annotations(a["direction"]["train"], a["root"])]
    assert directions == [i % 4 for i in range(8)] and digits == [i // 4 for i in range(8)]
    with av.open(os.path.join(a["root"], "videos/val/00000.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (32, 32, 3)


def test_split_pools_are_disjoint_and_cover_every_scan():
    _, targets = load_digit_images()
    pools = split_pools(targets, split_seed=0)
    seen = np.concatenate([p for split in pools.values() for p in split])
    assert sorted(seen.tolist()) == list(range(len(targets)))
    for split in pools.values():
        assert all((targets[idx] == digit).all() and len(idx) > 0 for digit, idx in enumerate(split))
    assert not np.array_equal(split_pools(targets, 1)["val"][0], pools["val"][0])


def test_the_bright_digit_moves_along_its_direction():
    images, _ = load_digit_images()
    for direction, axis, sign in ((0, 1, 1), (1, 1, -1), (2, 0, 1), (3, 0, -1)):
        video = render_digits(np.random.default_rng(direction), [images[0]], direction, speed=1, frames=8, size=48)
        ink = video.astype(np.float32).mean(-1)  # [T, H, W]
        ink = ink - np.median(ink)
        weights = np.clip(ink, 0, None)
        coords = np.arange(48, dtype=np.float32)
        centre = lambda w: (w.sum(1 - axis) * coords).sum() / w.sum()  # noqa: E731
        first, last = centre(weights[0]), centre(weights[-1])
        assert sign * (last - first) > 5, (direction, first, last)


def test_upsample_keeps_range_and_distractors_show():
    images, _ = load_digit_images()
    up = upsample(images[5], 20)
    assert up.shape == (20, 20) and up.min() >= 0 and up.max() <= 1 and up.max() > 0.5
    with pytest.raises(ValueError, match="digits_per_video"):
        make_digits_dataset("/nonexistent", digits_per_video=0)
    one = render_digits(np.random.default_rng(0), [images[0]], 0, 0, frames=4, size=48)
    three = render_digits(np.random.default_rng(0), [images[0], images[1], images[2]], 0, 0, frames=4, size=48)
    assert (three != one).any()


def test_probe_separates_what_is_separable_and_not_noise():
    from evals.probe import fit_probe
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 16))
    labels = np.arange(400) % 4
    x = (centres[labels] + rng.normal(0, 0.8, (400, 16))).astype(np.float32)
    good = fit_probe(x[:300], labels[:300], x[300:], labels[300:], Cs=[0.01, 1.0], folds=4, max_iter=200, seed=0)
    assert good["top1"] > 90 and good["cv_top1"] > 90 and good["C"] in (0.01, 1.0)
    noise = rng.normal(0, 1, (400, 16)).astype(np.float32)
    chance = fit_probe(noise[:300], labels[:300], noise[300:], labels[300:], Cs=[0.01, 1.0], folds=4, max_iter=200,
                       seed=0)
    assert chance["top1"] < 45


@pytest.mark.e2e
def test_the_probe_reports_probe_and_knn_for_every_labelling(tmp_path):
    import evals.probe
    data = make_digits_dataset(str(tmp_path / "digits"), num_train=40, num_val=12, num_test=0, frames=8, size=32, seed=0)
    out = tmp_path / "probe"
    results = evals.probe.main(evals.probe.get_args([
        "--model", "vit_tiny_patch16_224", "--random_init", "--data_set", "custom", "--data_path", data["digit"]["dir"],
        data["direction"]["dir"], "--data_root", data["root"], "--input_size", "32", "--short_side_size", "32",
        "--num_frames", "4", "--sampling_rate", "2", "--num_workers", "0", "--Cs", "0.1", "1", "--k", "5", "20",
        "--output_dir", str(out)]))
    assert set(results["labellings"]) == {"digit", "direction"}
    for name, classes in (("digit", 10), ("direction", 4)):
        entry = results["labellings"][name]
        assert entry["nb_classes"] == classes and entry["num_train"] == 40 and entry["num_val"] == 12
        assert entry["probe"]["C"] in (0.1, 1.0) and 0 <= entry["probe"]["top1"] <= 100
        assert set(entry["knn"]) == {"5", "20"}
    assert (out / "probe_results.json").exists()
    with pytest.raises(SystemExit, match="exactly one"):
        evals.probe.main(evals.probe.get_args(["--data_path", data["digit"]["dir"], "--output_dir", str(out)]))
