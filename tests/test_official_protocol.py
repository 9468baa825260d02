"""Official SIGMA fine-tuning/evaluation semantics, each pinned by a small worked example, and
our test views against a reference of the official test loader on generated videos."""
import numpy as np
import pytest
import torch

from datasets import transforms as T
from datasets.annotations import read_annotations
from datasets.frame_indices import dense_indices, linspace_indices, segment_indices
from datasets.synthetic import render_clip, write_video
from datasets.video_dataset import ClipConfig, VideoClipDataset


def test_k400_test_starts_n300_rate4():
    # Every 4th frame of 300: 75 entries; windows of 16 start at int(s * 59 / (m - 1)) in that list.
    assert [dense_indices(300, 16, 4, "test", segment=s, num_segments=2)[0] for s in range(2)] == [0, 59 * 4]
    starts = [dense_indices(300, 16, 4, "test", segment=s, num_segments=5)[0] // 4 for s in range(5)]
    assert starts == [0, 14, 29, 44, 59]  # 14.75 -> 14, 29.5 -> 29, 44.25 -> 44
    assert dense_indices(300, 16, 4, "test", segment=1, num_segments=5) == [4 * (14 + i) for i in range(16)]


def test_dense_test_short_video_pads_the_strided_list():
    # 10 frames at rate 4: [0, 4, 8] padded with 8 to 16 entries; every view is that list.
    assert dense_indices(10, 16, 4, "test", segment=1, num_segments=2) == [0, 4, 8] + [8] * 13


def test_ssv2_train_integer_segments():
    # n = 45: 16 segments of 45 // 16 = 2 frames; frames 32..44 are never used.
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = segment_indices(45, 16, "train", g)
        assert all(2 * i <= f < 2 * i + 2 for i, f in enumerate(idx))
        seen.update(idx)
    assert seen == set(range(32))
    # n = 20: segments of one frame, so always frames 0..15; n < 16 repeats frame 0.
    assert segment_indices(20, 16, "train", g) == list(range(16))
    assert segment_indices(12, 16, "train", g) == [0] * 16


def test_ssv2_test_views_sorted_and_interleaved():
    # n = 48, tick 3: starts 0, 3, ..., middles int(1.5 + 3i) = 1, 4, ...; sorted, view s = [s::2].
    assert segment_indices(48, 16, "test", segment=0, num_segments=2) == [3 * i for i in range(16)]
    assert segment_indices(48, 16, "test", segment=1, num_segments=2) == [3 * i + 1 for i in range(16)]
    # n = 20, tick 1.25: the sorted list interleaves unevenly; view 1 is its odd entries.
    starts = [int(1.25 * i) for i in range(16)]
    middles = [int(0.625 + 1.25 * i) for i in range(16)]
    assert segment_indices(20, 16, "test", segment=1, num_segments=2) == sorted(starts + middles)[1::2]


def test_finetune_train_linspace_window():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = linspace_indices(100, 16, 4, g)
        end = idx[0] + 64
        assert 64 <= end <= 99
        assert idx == np.clip(np.linspace(end - 64, end, 16), end - 64, end - 1).astype(int).tolist()
    # A 30-frame video at rate 4: 7 linspace positions over [0, 30], padded with 30, clipped to 29.
    assert linspace_indices(30, 16, 4, g) == [0, 5, 10, 15, 20, 25, 29] + [29] * 9


def test_resize_768x576_matches_hand_computed_bilinear():
    # 576 -> 224 rows, 768 -> int(224 * 768 / 576) = 298 columns. Output pixel (y, x) = (1, 2)
    # samples the input at ((1 + 0.5) * 576 / 224 - 0.5, (2 + 0.5) * 768 / 298 - 0.5).
    h, w = 576, 768
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    frame = ((xs % 3) * 100 + (ys % 2) * 50).to(torch.uint8)  # fine detail: antialiasing would blur it
    clip = frame.expand(1, 3, h, w)
    out = T.resize_short_side(clip, 224)
    assert out.shape == (1, 3, 224, 298)
    sy, sx = 1.5 * 576 / 224 - 0.5, 2.5 * 768 / 298 - 0.5
    y0, x0 = int(sy), int(sx)
    fy, fx = sy - y0, sx - x0
    f = frame.to(torch.float64)
    value = ((1 - fy) * ((1 - fx) * f[y0, x0] + fx * f[y0, x0 + 1])
             + fy * ((1 - fx) * f[y0 + 1, x0] + fx * f[y0 + 1, x0 + 1]))
    assert abs(out[0, 0, 1, 2].item() - value.item()) <= 1.0  # cv2's 11-bit fixed point: within a level
    assert abs(T.resize_short_side(clip, 224, antialias=True)[0, 0, 1, 2].item() - value.item()) > 5


@pytest.mark.parametrize("h,w", [(576, 768), (144, 176), (240, 320), (448, 448), (360, 642), (100, 100), (426, 240)])
def test_resize_is_cv2_inter_linear_bit_for_bit(h, w):
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    new_h, new_w = (224, int(224 * w / h)) if h <= w else (int(224 * h / w), 224)
    ref = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    ours = T.resize_short_side(torch.from_numpy(img).permute(2, 0, 1)[None], 224)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_random_erasing_official_cube():
    video = torch.zeros(3, 4, 32, 32)
    out = T.random_erasing(video.clone(), torch.Generator().manual_seed(3), probability=1.0, mode="pixel")
    erased = out.abs().sum(dim=(0, 1)) > 0  # [H, W]
    assert erased.any()
    for t in range(4):  # the same box in every frame, different noise in each
        assert torch.equal(out[:, t].abs().sum(0) > 0, erased)
    assert not torch.equal(out[:, 0], out[:, 1])


@pytest.fixture(scope="module")
def official_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    rng = np.random.default_rng(0)
    lines = []
    for i, (h, w, n, codec) in enumerate([(576, 768, 25, "h264"), (144, 176, 50, "h264"), (176, 144, 23, "h264"),
                                          (288, 352, 45, "mpeg4")]):
        frames, _ = render_clip(rng, label=i % 4, frames=n, height=h, width=w)
        name = f"v{i}.{'avi' if codec == 'mpeg4' else 'mp4'}"
        write_video(str(root / name), frames, codec=codec)
        lines.append(f"{name} {i}")
    (root / "test.csv").write_text("\n".join(lines) + "\n")
    return str(root)


@pytest.mark.parametrize("sampling", ["dense", "segment"])
def test_test_views_match_official_reference(official_videos, sampling):
    pytest.importorskip("cv2")
    from tests.official_reference import official_test_views

    segments, crops = 2, 3
    samples = read_annotations(f"{official_videos}/test.csv", official_videos, with_labels=True)
    clip = ClipConfig(8, 2, sampling, 64, 64)
    ds = VideoClipDataset(samples, "test", clip, test_num_segment=segments, test_num_crop=crops)
    for v, sample in enumerate(samples):
        for s in range(segments):
            ours = ds[v * segments + s]["video"]  # [crops, C, T, H, W]
            ref = official_test_views(sample.path, sampling, 8, 2, 64, segments, crops, s)
            for c in range(crops):
                diff = (ours[c] - torch.from_numpy(ref[c])).abs()
                assert diff.max() < 1e-4, (sample.path, s, c)  # the same frames and pixels


def test_dino_teacher_and_prototype_scores_fp32_under_autocast():
    from engine_for_pretraining import Objective, teacher_targets
    from masking_generator import tube_mask
    from tests.helpers import GRID, clips, tiny_pretrain, tiny_teacher

    teacher, videos, mask = tiny_teacher("dino_v1"), clips(), tube_mask(2, GRID, 0.5)
    frames = videos[:, :, ::2].transpose(1, 2).flatten(0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = teacher(frames)
    assert feats.dtype == torch.float32 and torch.equal(feats, teacher(frames))  # exactly the fp32 teacher
    model = tiny_pretrain("dino_v1", "SWAV")
    targets = teacher_targets(teacher, videos, mask.flatten(1), 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(videos, mask.flatten(1), targets)
    assert out.logits_target.dtype == out.logits_pred.dtype == torch.float32
    temperature = Objective.of(model).temperature  # the forward's default, the objective's
    protos = torch.nn.functional.normalize(model.prototypes.detach(), dim=1) / temperature
    expected = torch.nn.functional.normalize(out.pred.detach().float().flatten(0, 1), dim=-1) @ protos.t()
    torch.testing.assert_close(out.logits_pred.detach(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.e2e
def test_knn_official_protocol_test_views_head_features(tmp_path):
    import evals.knn
    from datasets.synthetic import make_dataset

    make_dataset(str(tmp_path), num_train=2, num_val=2, num_test=3, frames=12, height=36, width=48, seed=0)
    argv = ["--model", "vit_small_patch16_224", "--data_set", "custom", "--nb_classes", "4", "--data_path",
            str(tmp_path), "--input_size", "32", "--short_side_size", "32", "--num_frames", "4",
            "--sampling_rate", "2", "--batch_size", "6", "--num_workers", "0", "--random_init",
            "--official_protocol", "--output_dir", str(tmp_path / "knn")]
    results = evals.knn.main(evals.knn.get_args(argv))
    assert results["protocol"] == "official" and list(results["per_k"]) == ["200"]
    assert results["num_train"] == results["num_val"] == 3 * 2 * 3  # every test view, bank = queries
    one = evals.knn.main(evals.knn.get_args(argv + ["--k", "1"]))
    assert one["top1"] == 100.0  # each query finds itself


@pytest.mark.parametrize("crop_first", [False, True])
def test_train_view_rand_augment_order_and_fill(crop_first):
    from datasets.video_dataset import AugmentConfig

    augment = AugmentConfig(auto_augment="rand-m9-n2-p1.0", reprob=1.0, crop_first=crop_first)
    ds = VideoClipDataset([], "train", ClipConfig(num_frames=4, input_size=32), augment)
    assert ds.rand_augment.fill == (128, 128, 128) and augment.scale == (0.25, 1.0)
    seen = []
    ra = ds.rand_augment
    ds.rand_augment = lambda clip, g: seen.append(tuple(clip.shape)) or ra(clip, g)
    frames = torch.randint(0, 256, (4, 3, 48, 64), dtype=torch.uint8)
    video = ds._train_view(frames, torch.Generator().manual_seed(0))
    assert video.shape == (3, 4, 32, 32) and video.dtype == torch.float32
    assert seen == [(4, 3, 32, 32) if crop_first else (4, 3, 48, 64)]  # official: the whole frame


def test_float_crop_equals_normalise_then_crop():
    # The official crops the normalised float frames; ours normalises only the box: the same.
    clip = torch.randint(0, 256, (3, 3, 40, 56), dtype=torch.uint8)
    out = T.random_resized_crop_float(clip, 24, torch.Generator().manual_seed(5))
    top, left, h, w = T.random_resized_crop_params(40, 56, torch.Generator().manual_seed(5), scale=(0.25, 1.0),
                                                   ratio=(0.75, 1.3333))
    full = T.to_normalized_float(clip)[..., top:top + h, left:left + w]
    expected = torch.nn.functional.interpolate(full, size=(24, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
