"""Tests for datasets/transforms.py: clip augmentations on uint8 [T, C, H, W] tensors."""
import sys
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from datasets import transforms as T  # noqa: E402

CLIP_SHAPE = (8, 3, 60, 80)  # [T, C, H, W]
SCALE_SET = (1, .875, .75, .66)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_clip(shape=CLIP_SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen(seed))


def smooth_clip(shape=CLIP_SHAPE, seed: int = 0) -> torch.Tensor:
    """Image-like content (smooth, not white noise), so that colour ops have something to change."""
    t, c, h, w = shape
    coarse = torch.rand((t, c, h // 5, w // 5), generator=gen(seed)) * 255
    return TF.resize(coarse, [h, w], antialias=False).round().clamp(0, 255).to(torch.uint8)


def static_clip(shape=CLIP_SHAPE, seed: int = 0) -> torch.Tensor:
    """A clip whose frames are all the same image: any per-frame randomness shows as a difference."""
    frame = smooth_clip((1,) + tuple(shape[1:]), seed)
    return frame.expand(shape).contiguous()


def coord_clip(t: int, h: int, w: int) -> torch.Tensor:
    """Channel 0 holds the row index, channel 1 the column index, channel 2 the frame index."""
    ys = torch.arange(h).view(h, 1).expand(h, w)
    xs = torch.arange(w).view(1, w).expand(h, w)
    frames = [torch.stack((ys, xs, torch.full((h, w), i))) for i in range(t)]
    return torch.stack(frames).to(torch.uint8)  # [T, 3, H, W]


def top_left(crop: torch.Tensor):
    return int(crop[0, 0, 0, 0]), int(crop[0, 1, 0, 0])


def assert_frames_identical(out: torch.Tensor, frame_dim: int = 0) -> None:
    first = out.select(frame_dim, 0).unsqueeze(frame_dim)
    assert torch.equal(out, first.expand_as(out)), "frames of a static clip came out different"


# Every random augmentation, as fn(clip uint8 [T, C, H, W], generator) -> tensor with frame dim 0.
RANDOM_OPS = {
    "multi_scale_crop": lambda c, g: T.multi_scale_crop(c, 32, g),
    "multi_scale_crop_free": lambda c, g: T.multi_scale_crop(c, 32, g, fix_crop=False),
    "random_resized_crop": lambda c, g: T.random_resized_crop(c, 32, g),
    "horizontal_flip": lambda c, g: T.horizontal_flip(c, g),
    "rand_augment_inc": lambda c, g: T.RandAugment("rand-m9-n4-mstd0.5-inc1")(c, g),
    "rand_augment_all": lambda c, g: T.RandAugment("rand-m9-n6-p1.0")(c, g),
    "random_erasing": lambda c, g: T.random_erasing(T.to_normalized_float(c), g, probability=1.0,
                                                    mode="const").transpose(0, 1),
}


# ----------------------------------------------------------------------------------------------
# Shapes and dtypes

@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_random_ops_shapes_and_dtypes(name):
    out = RANDOM_OPS[name](random_clip(), gen(0))
    if name == "random_erasing":
        assert out.dtype == torch.float32 and out.shape == (8, 3, 60, 80)
    elif "crop" in name:
        assert out.dtype == torch.uint8 and out.shape == (8, 3, 32, 32)
    else:
        assert out.dtype == torch.uint8 and out.shape == CLIP_SHAPE


@pytest.mark.parametrize("shape,size,expected", [
    ((8, 3, 60, 80), 30, (30, 40)),
    ((8, 3, 80, 60), 30, (40, 30)),
    ((8, 3, 60, 80), 45, (45, 60)),
    ((2, 3, 64, 64), 50, (50, 50)),
    ((2, 3, 61, 80), 40, (40, 52)),  # long side truncated: int(40 * 80 / 61) = 52
])
def test_resize_short_side_shape(shape, size, expected):
    out = T.resize_short_side(random_clip(shape), size)
    assert out.dtype == torch.uint8
    assert out.shape == shape[:2] + expected


def test_resize_short_side_keeps_content():
    clip = smooth_clip()
    out = T.resize_short_side(clip, 30)  # exact 2x downscale of a smooth clip
    ref = clip.float().view(8, 3, 30, 2, 40, 2).mean(dim=(3, 5))
    assert (out.float() - ref).abs().mean() < 3.0
    assert torch.equal(T.resize_short_side(clip, 60), clip)


def test_resize_is_square_and_keeps_constant_frames():
    clip = torch.full(CLIP_SHAPE, 77, dtype=torch.uint8)
    out = T.resize(clip, 32)
    assert out.dtype == torch.uint8 and out.shape == (8, 3, 32, 32)
    assert bool((out == 77).all())
    # Whole frame, no crop: the right edge of a left/right split frame is still there.
    split = torch.zeros(CLIP_SHAPE, dtype=torch.uint8)
    split[..., 40:] = 200
    out = T.resize(split, 32)
    assert int(out[0, 0, 0, 0]) == 0 and int(out[0, 0, 0, -1]) == 200


def test_to_normalized_float_matches_reference():
    clip = random_clip()
    out = T.to_normalized_float(clip)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    ref = ((clip.float() / 255.0 - mean) / std).permute(1, 0, 2, 3)  # [C, T, H, W]
    assert out.dtype == torch.float32 and out.shape == (3, 8, 60, 80) and out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError):
        T.to_normalized_float(clip.float())


# ----------------------------------------------------------------------------------------------
# Same parameters for every frame, determinism, variation across seeds

@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_static_clip_stays_static(name):
    clip = static_clip()
    for seed in range(12):
        assert_frames_identical(RANDOM_OPS[name](clip, gen(seed)))


@pytest.mark.parametrize("name", sorted(RANDOM_OPS))
def test_deterministic_given_seed_and_varies_across_seeds(name):
    clip = smooth_clip()
    fn = RANDOM_OPS[name]
    assert torch.equal(fn(clip.clone(), gen(3)), fn(clip.clone(), gen(3)))
    outputs = [fn(clip.clone(), gen(seed)) for seed in range(8)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])


def test_no_global_rng_use():
    clip = smooth_clip()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for fn in RANDOM_OPS.values():
        fn(clip.clone(), gen(5))
    assert torch.equal(before, torch.get_rng_state())


# ----------------------------------------------------------------------------------------------
# Deterministic crops

def test_center_crop_position():
    out = T.center_crop(coord_clip(2, 60, 80), 50)
    assert out.shape == (2, 3, 50, 50)
    assert top_left(out) == (5, 15)
    with pytest.raises(ValueError):
        T.center_crop(coord_clip(2, 60, 80), 61)


@pytest.mark.parametrize("h,w,num_crops,expected", [
    (60, 80, 3, [(0, 0), (0, 10), (0, 20)]),  # wide: left, centre, right
    (80, 60, 3, [(0, 0), (10, 0), (20, 0)]),  # tall: top, centre, bottom
    (60, 90, 4, [(0, 0), (0, 10), (0, 20), (0, 30)]),  # evenly spaced along the long side
    (60, 83, 3, [(0, 0), (0, 11), (0, 23)]),  # offsets int(i * step), step 11.5
    (60, 80, 1, [(0, 10)]),  # one crop is the centre crop
    (60, 60, 2, [(0, 0), (0, 0)]),
])
def test_spatial_crops_positions(h, w, num_crops, expected):
    crops = T.spatial_crops(coord_clip(4, h, w), 60, num_crops)
    assert len(crops) == num_crops
    for crop, pos in zip(crops, expected):
        assert crop.shape == (4, 3, 60, 60) and crop.dtype == torch.uint8
        assert top_left(crop) == pos
        assert [int(v) for v in crop[:, 2, 0, 0]] == [0, 1, 2, 3]  # all frames, in order


def test_spatial_crops_rejects_bad_arguments():
    with pytest.raises(ValueError):
        T.spatial_crops(random_clip(), 60, 0)
    with pytest.raises(ValueError):
        T.spatial_crops(random_clip(), 70, 3)


# ----------------------------------------------------------------------------------------------
# Random crops

GRID_13 = {(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)}
GRID_5 = {(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)}


def collect_msc(h, w, size, seeds=400, **kwargs):
    return [T.multi_scale_crop_params(h, w, size, gen(s), **kwargs) for s in range(seeds)]


@pytest.mark.parametrize("more_fix_crop,grid", [(True, GRID_13), (False, GRID_5)])
def test_multi_scale_crop_params_official_scales_and_grid(more_fix_crop, grid):
    sides = [int(240 * s) for s in SCALE_SET]  # [240, 210, 180, 158], none within 3 of 224
    seen_pairs, seen_grid = set(), set()
    for top, left, ch, cw in collect_msc(240, 320, 224, more_fix_crop=more_fix_crop):
        assert ch in sides and cw in sides
        assert abs(sides.index(ch) - sides.index(cw)) <= 1  # max_distort 1
        w_step, h_step = (320 - cw) // 4, (240 - ch) // 4
        assert left % w_step == 0 and (ch == 240 or top % h_step == 0)
        gx, gy = left // w_step, (top // h_step if h_step else 0)
        if h_step:
            assert (gx, gy) in grid
            seen_grid.add((gx, gy))
        seen_pairs.add((ch, cw))
    assert len(seen_pairs) == 10  # 4 diagonal pairs + 6 off by one scale
    assert seen_grid == grid


def test_multi_scale_crop_params_snaps_sizes_near_target():
    # int(226 * 1) = 226 is within 3 of 224, so it becomes 224.
    sizes = {p[2] for p in collect_msc(226, 300, 224)} | {p[3] for p in collect_msc(226, 300, 224)}
    assert sizes == {224, int(226 * .875), int(226 * .75), int(226 * .66)}


def test_multi_scale_crop_params_free_offsets_inside_frame():
    for top, left, ch, cw in collect_msc(60, 80, 32, seeds=200, fix_crop=False):
        assert 0 <= top <= 60 - ch and 0 <= left <= 80 - cw


def test_multi_scale_crop_uses_its_params():
    clip = smooth_clip()
    top, left, ch, cw = T.multi_scale_crop_params(60, 80, 32, gen(7))
    expected = TF.resized_crop(clip, top, left, ch, cw, [32, 32], antialias=True)
    assert torch.equal(T.multi_scale_crop(clip, 32, gen(7)), expected)


def test_random_resized_crop_params_within_ranges():
    areas, ratios = [], []
    for seed in range(300):
        top, left, h, w = T.random_resized_crop_params(60, 80, gen(seed), scale=(0.2, 0.6), ratio=(0.75, 1.5))
        assert 0 <= top <= 60 - h and 0 <= left <= 80 - w
        areas.append(h * w / (60 * 80))
        ratios.append(w / h)
        assert 0.2 - 0.05 <= areas[-1] <= 0.6 + 0.05  # rounding of h and w
        assert 0.75 * 0.9 <= ratios[-1] <= 1.5 * 1.1
    assert min(areas) < 0.3 and max(areas) > 0.5 and min(ratios) < 0.85 and max(ratios) > 1.3


@pytest.mark.parametrize("h,w,expected", [
    (60, 120, (0, 20, 60, 80)),  # too wide: full height, width at the largest ratio, centred
    (120, 60, (30, 0, 60, 60)),  # too tall: full width, height at the smallest ratio (1:1 here)
    (60, 70, (0, 0, 60, 70)),  # ratio in range: whole frame
])
def test_random_resized_crop_params_fallback(h, w, expected):
    # An area fraction of at least 5 never fits, so all ten tries fail.
    assert T.random_resized_crop_params(h, w, gen(0), scale=(5.0, 6.0), ratio=(1.0, 4 / 3)) == expected


def test_random_resized_crop_uses_its_params():
    clip = smooth_clip()
    top, left, h, w = T.random_resized_crop_params(60, 80, gen(9))
    expected = TF.resized_crop(clip, top, left, h, w, [32, 32], antialias=True)
    assert torch.equal(T.random_resized_crop(clip, 32, gen(9)), expected)


def test_horizontal_flip_probability():
    clip = random_clip()
    assert torch.equal(T.horizontal_flip(clip, gen(0), p=1.0), clip.flip(-1))
    assert torch.equal(T.horizontal_flip(clip, gen(0), p=0.0), clip)
    flips = sum(not torch.equal(T.horizontal_flip(clip, gen(s)), clip) for s in range(200))
    assert 70 < flips < 130


# ----------------------------------------------------------------------------------------------
# Random erasing

def erased_mask(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (before != after).any(dim=0)  # [T, H, W]


def test_random_erasing_probability_zero_is_identity():
    video = T.to_normalized_float(random_clip())
    for seed in range(50):
        assert torch.equal(T.random_erasing(video.clone(), gen(seed), probability=0.0), video)


@pytest.mark.parametrize("mode", ["pixel", "rand", "const"])
def test_random_erasing_box_is_shared_by_all_frames_noise_is_not(mode):
    video = T.to_normalized_float(random_clip())
    for seed in range(20):
        out = T.random_erasing(video.clone(), gen(seed), probability=1.0, mode=mode)
        mask = erased_mask(video, out)
        assert bool(mask.any())
        assert bool((mask == mask[:1]).all()), "erased region differs between frames"
        rows, cols = mask[0].any(1).nonzero(), mask[0].any(0).nonzero()
        top, bottom, left, right = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        assert bool(mask[0, top:bottom, left:right].all())  # a filled rectangle
        area = (bottom - top) * (right - left) / (60 * 80)
        assert 0.015 <= area <= 0.36
        box = out[:, :, top:bottom, left:right]
        if mode == "const":
            assert bool((box == 0).all())
        else:  # official: the noise (or colour) is drawn per frame
            assert not torch.equal(box, box[:, :1].expand_as(box))
        if mode == "rand":
            assert torch.equal(box, box[:, :, :1, :1].expand_as(box))
        elif mode == "pixel":
            assert box[0, 0].std() > 0.5


def test_random_erasing_count_and_bad_mode():
    video = T.to_normalized_float(random_clip())
    out = T.random_erasing(video.clone(), gen(1), probability=1.0, mode="const", min_count=3, max_count=3)
    mask = erased_mask(video, out)
    assert bool((mask == mask[:1]).all())
    assert int(mask[0].sum()) <= 60 * 80 / 3 + 60  # three boxes sharing one box's area budget
    with pytest.raises(ValueError):
        T.random_erasing(video.clone(), gen(0), probability=1.0, mode="noise")


def test_random_erasing_rate():
    video = T.to_normalized_float(random_clip((2, 3, 20, 20)))
    hits = sum(not torch.equal(T.random_erasing(video.clone(), gen(s), probability=0.25), video) for s in range(400))
    assert 70 < hits < 130
