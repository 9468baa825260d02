"""Unsupervised video object segmentation: matching and IoU on hand-made cases, k-means, the clustering
path on feature maps that do and do not separate the object, the driver end to end on generated
DAVIS and YouTube-VOS sets, and bad input."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.synthetic_vos import make_vos_dataset, render_video
from datasets.vos import read_mask, vos_videos
from evals.kmeans import kmeans
from evals.segmentation_metrics import confusion_matrix, hungarian_assignment, score_labels


def _masks(seed=0):
    """[4, 16, 16] ids: background 0 and objects 1 and 3 (id 2 unused on purpose)."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((4, 16, 16), np.uint8)
    for t in range(4):
        y, x = rng.integers(0, 8, 2)
        gt[t, y:y + 6, x:x + 6] = 1
        gt[t, 10:14, t:t + 5] = 3
    return gt


def test_perfect_and_permuted_predictions_score_one():
    gt = _masks()
    labels = np.searchsorted([0, 1, 3], gt)  # clusters numbered like the labels
    for clusters in (labels, np.array([2, 0, 1])[labels]):  # identity and a permutation
        for matching in ("hungarian", "many_to_one"):
            s = score_labels(gt, clusters, 3, matching)
            assert s["miou"] == pytest.approx(1.0)
            assert set(s["iou"]) == {0, 1, 3}
            np.testing.assert_array_equal(s["prediction"], gt)  # matched clusters carry the GT ids


def test_constant_prediction_scores_the_background_share():
    gt = _masks()
    share = float((gt == 0).mean())  # the one cluster is matched to background: IoU = its share
    for matching in ("hungarian", "many_to_one"):
        s = score_labels(gt, np.zeros_like(gt), 3, matching)
        assert s["miou"] == pytest.approx(share / 3)
        assert s["iou"][1] == 0 and s["iou"][3] == 0


def test_hungarian_hand_made_cases():
    # IoU: (g0,p0) 3/6, (g0,p1) 3/10, (g1,p1) 4/7: p0 -> 0, p1 -> 1; IoU g0 = 3/6, g1 = 4/7
    gt = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    assert confusion_matrix(gt, pred, 2, 2).tolist() == [[3, 3], [0, 4]]
    assert score_labels(gt, pred, 2, "hungarian")["miou"] == pytest.approx((3 / 6 + 4 / 7) / 2)
    # the IoU-maximising assignment is not the greedy one: conf [[2, 1], [1, 0]] gives IoU
    # [[2/4, 1/3], [1/3, 0]]; greedy takes g0<-p0 (0.5) and leaves g1<-p1 (0): 0.5, the assignment
    # g0<-p1, g1<-p0 sums to 2/3
    assert hungarian_assignment(np.array([[2, 1], [1, 0]]), background=0).tolist() == [1, 0]
    # more clusters than labels: the unmatched cluster is read as background
    gt = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert score_labels(gt, np.array([0, 0, 2, 2, 1, 1, 1, 1]), 3, "hungarian")["miou"] == pytest.approx(1.0)
    # no background in the clip: the unmatched cluster's pixels count against object 1
    s = score_labels(np.array([1, 1, 2, 2]), np.array([0, 1, 2, 2]), 3, "hungarian")
    assert s["iou"] == {1: pytest.approx(0.5), 2: pytest.approx(1.0)} and s["miou"] == pytest.approx(0.75)


def test_many_to_one_hand_made_case():
    # precision: p0 -> g0 (4/4), p1 -> g0 (2/4 tie with g1: the lower label), p2 -> g1 (2/2)
    gt = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    s = score_labels(gt, pred, 3, "many_to_one")
    assert s["iou"] == {0: pytest.approx(6 / 8), 1: pytest.approx(2 / 4)}
    assert s["prediction"].tolist() == [0] * 8 + [1] * 2
    # Hungarian on the same clip: p0 -> g0 (IoU 4/6), p2 -> g1 (2/4 beats p1's 2/6), p1 unmatched
    # -> background: the same map here
    assert score_labels(gt, pred, 3, "hungarian")["miou"] == pytest.approx((6 / 8 + 2 / 4) / 2)


def test_hungarian_beats_greedy_on_pixels():
    gt = np.repeat([0, 0, 1], [2, 1, 1])
    pred = np.repeat([0, 1, 0], [2, 1, 1])
    assert confusion_matrix(gt, pred, 2, 2).tolist() == [[2, 1], [1, 0]]
    s = score_labels(gt, pred, 2, "hungarian")  # g0 <- p1: 1 / 3; g1 <- p0: 1 / 3 (greedy: 2/4 and 0)
    assert s["iou"] == {0: pytest.approx(1 / 3), 1: pytest.approx(1 / 3)}


def test_kmeans_recovers_blobs_and_matches_sklearn_inertia():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=g) * 10
    truth = torch.arange(4).repeat_interleave(200)
    x = centres[truth] + torch.randn(800, 6, generator=g)
    labels, inertia = kmeans(x, 4, restarts=3, iters=50, seed=0)
    for c in range(4):  # each blob is one cluster, and the clusters differ
        assert labels[truth == c].unique().numel() == 1
    assert labels.unique().numel() == 4
    assert inertia == pytest.approx(float(((x - centres[truth]) ** 2).sum()), rel=0.05)
    sklearn = pytest.importorskip("sklearn.cluster")
    fit = sklearn.KMeans(4, n_init=3, random_state=0).fit(x.numpy())
    assert inertia <= fit.inertia_ * 1.001
    same, _ = kmeans(torch.ones(50, 3), 3, restarts=2, seed=0)  # every point equal: one cluster
    assert same.unique().tolist() == [0]


def _token_grid(object_patches, dim=8, noise=0.05, constant=False):
    """Tokens [t, n, n, dim]: one direction for object patches, another for background."""
    g = torch.Generator().manual_seed(1)
    on = torch.from_numpy(object_patches).float()  # [t, n, n]
    x = torch.zeros(*on.shape, dim)
    x[..., 0], x[..., 1] = 5 * on, 5 * (1 - on)
    x = x + noise * torch.randn(x.shape, generator=g)
    return torch.ones_like(x) if constant else x


def test_separating_features_score_near_one_and_constant_ones_chance():
    from evals.segmentation import cluster_tokens
    patches = np.zeros((2, 8, 8), np.uint8)
    patches[0, 2:6, 1:5] = 1
    patches[1, 2:6, 2:6] = 1  # the object moves one patch right
    gt = patches.repeat(16, 1).repeat(16, 2).repeat(2, 0)  # [4, 128, 128]: tubelet 2, patch 16
    ks = {"clustering": 2, "overclustering": 10}
    maps = cluster_tokens(_token_grid(patches), tubelet=2, size=128, ks=ks, pca_dim=50, restarts=3, iters=30, seed=0)
    assert maps["clustering"].shape == (4, 128, 128)
    # not exactly 1: bilinear upsampling ramps the features between patch centres, and k-means
    # puts the boundary at the midpoint of the two centroids, not at the patch edge
    assert score_labels(gt, maps["clustering"], 2, "hungarian")["miou"] > 0.95
    assert score_labels(gt, maps["overclustering"], 10, "many_to_one")["miou"] > 0.95
    flat = cluster_tokens(_token_grid(patches, constant=True), tubelet=2, size=128, ks=ks, pca_dim=50, restarts=3,
                          iters=30, seed=0)
    share = float((gt == 0).mean())  # everything in one cluster, matched to background
    assert score_labels(gt, flat["clustering"], 2, "hungarian")["miou"] == pytest.approx(share / 2)
    assert score_labels(gt, flat["overclustering"], 10, "many_to_one")["miou"] == pytest.approx(share / 2)


def test_generator_writes_exact_palette_masks(tmp_path):
    data = make_vos_dataset(str(tmp_path / "davis"), "davis", num_videos=2, frames=5, height=24, width=32, seed=3)
    _, masks, shapes = render_video(np.random.default_rng([3, 1]), 5, 24, 32)
    mask_dir = tmp_path / "davis" / "Annotations" / "480p" / data["videos"][1]
    with Image.open(mask_dir / "00002.png") as image:
        assert image.mode == "P"
    for t in range(5):
        np.testing.assert_array_equal(read_mask(str(mask_dir / f"{t:05d}.png")), masks[t])
    assert set(np.unique(masks[0])) - {0} == set(shapes)  # every object is in the first frame
    videos = vos_videos("davis", data["root"], "val")
    assert [v.name for v in videos] == data["videos"] and videos[1].object_ids == tuple(sorted(shapes))


def _tiny_checkpoint(path):
    from modeling_finetune import MODELS
    model = MODELS["vit_tiny_patch16_224"](img_size=32, all_frames=4, num_classes=0)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.mark.e2e
@pytest.mark.parametrize("layout,workers", [("davis", 2), ("ytvos", 0)])
def test_driver_end_to_end(tmp_path, layout, workers):
    import evals.segmentation
    data = make_vos_dataset(str(tmp_path / layout), layout, num_videos=3, frames=16, height=24, width=32, seed=0)
    out = tmp_path / "out"
    args = evals.segmentation.get_args([
        "--data_set", layout, "--data_path", data["root"], "--model", "vit_tiny_patch16_224",
        "--finetune", _tiny_checkpoint(tmp_path / "tiny.pth"), "--input_size", "32", "--workers", str(workers),
        "--kmeans_restarts", "2", "--num_overlays", "2", "--output_dir", str(out), "--device", "cpu"])
    results = evals.segmentation.main(args)
    saved = json.loads((out / "segmentation_results.json").read_text())
    assert saved["num_frames"] == (16 if layout == "davis" else 4)  # the protocol's clip lengths
    for protocol in ("clustering", "overclustering"):
        assert 0 <= saved[protocol]["miou"] <= 100 and saved[protocol]["num_clips"] == 3
        assert saved[protocol]["miou"] == pytest.approx(results[protocol]["miou"])
        assert set(saved[protocol]["per_video"]) == set(data["videos"])
    assert saved["overclustering"]["per_video"]["video000"]["num_clusters"] == 10
    assert sorted(os.listdir(out / "overlays")) == ["video000.png", "video001.png"]
    with Image.open(out / "overlays" / "video000.png") as image:  # 4 columns of 32 px
        assert image.size[0] == 4 * 32


def _run(tmp_path, layout, **flags):
    import evals.segmentation
    argv = ["--data_set", layout, "--data_path", str(tmp_path / layout), "--model", "vit_tiny_patch16_224",
            "--random_init", "--input_size", "32", "--num_frames", "4", "--workers", "0", "--kmeans_restarts", "1",
            "--output_dir", str(tmp_path / "out")]
    return evals.segmentation.main(evals.segmentation.get_args(argv))


@pytest.mark.e2e
def test_bad_input_names_the_file(tmp_path):
    root = tmp_path / "davis"
    make_vos_dataset(str(root), "davis", num_videos=2, frames=4, height=24, width=32, seed=0)
    video_dir = root / "Annotations" / "480p" / "video001"
    bad = video_dir / "00002.png"
    mask = read_mask(str(bad))
    unknown = Image.fromarray(np.where(mask > 0, 7, 0).astype(np.uint8))
    unknown.putpalette(Image.open(video_dir / "00000.png").getpalette())
    unknown.save(bad)
    with pytest.raises(ValueError, match=r"00002\.png holds object id\(s\) \[7\].*first annotation"):
        _run(tmp_path, "davis")  # 4 frames of 4: every annotation is read
    Image.fromarray(np.stack([mask] * 3, -1)).save(bad)  # an RGB mask
    with pytest.raises(ValueError, match=r"00002\.png is a RGB image: expected a palette PNG"):
        _run(tmp_path, "davis")
    os.remove(bad)
    with pytest.raises(FileNotFoundError, match=r"missing annotation .*video001.*00002\.png"):
        _run(tmp_path, "davis")
    os.remove(root / "ImageSets" / "2017" / "val.txt")
    with pytest.raises(FileNotFoundError, match=r"ImageSets.2017.val\.txt does not exist"):
        _run(tmp_path, "davis")


@pytest.mark.e2e
def test_ytvos_bad_input_names_the_file(tmp_path):
    root = tmp_path / "ytvos"
    make_vos_dataset(str(root), "ytvos", num_videos=2, frames=4, height=24, width=32, seed=1)
    meta_path = root / "train" / "meta.json"
    meta = json.loads(meta_path.read_text())
    objects = meta["videos"]["video001"]["objects"]
    dropped = max(objects, key=int)
    del objects[dropped]  # an object the masks hold but meta.json does not list
    meta_path.write_text(json.dumps(meta))
    message = rf"Annotations.video001.\d+\.png holds object id\(s\) \[{dropped}\].*meta\.json"
    with pytest.raises(ValueError, match=message):
        _run(tmp_path, "ytvos")
    meta_path.write_text("{}")
    with pytest.raises(ValueError, match=r"meta\.json is not a YouTube-VOS meta\.json"):
        _run(tmp_path, "ytvos")
    os.remove(meta_path)
    with pytest.raises(FileNotFoundError, match=r"train.meta\.json does not exist"):
        _run(tmp_path, "ytvos")


def test_kmeans_bench_runs_both(caplog, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import bench_kmeans
    pytest.importorskip("sklearn")
    with caplog.at_level("INFO", logger="bench_kmeans"):
        bench_kmeans.main(["--size", "16", "--frames", "4", "--k", "3", "--seeds", "1", "--restarts", "2"])
    row = json.loads(caplog.records[0].getMessage())
    assert row["points"] == 2 * 16 * 16
    assert row["torch"]["inertia"] <= row["sklearn"]["inertia"] * 1.05
