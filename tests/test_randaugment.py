"""Tests for datasets/randaugment.py: timm's RandAugment on uint8 [T, C, H, W] clips."""
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa

from datasets import randaugment as RA
from test_transforms import gen, random_clip, smooth_clip


def test_rand_augment_parses_config():
    ra = RA.RandAugment("rand-m7-n4-mstd0.5-inc1")
    assert (ra.magnitude, ra.num_ops, ra.magnitude_std, ra.prob, ra.magnitude_max) == (7, 4, 0.5, 0.5, 10)
    assert ra.op_names == tuple(timm_aa._RAND_INCREASING_TRANSFORMS)
    ra = RA.RandAugment("rand-m9-n2-mstd101-p0.7-mmax12")
    assert (ra.magnitude, ra.num_ops, ra.magnitude_std, ra.prob, ra.magnitude_max) == (9, 2, math.inf, 0.7, 12)
    assert ra.op_names == tuple(timm_aa._RAND_TRANSFORMS)
    ra = RA.RandAugment("rand")
    assert (ra.magnitude, ra.num_ops, ra.magnitude_std, ra.prob) == (10, 2, 0.0, 0.5)
    assert ra.fill == (124, 116, 104)


@pytest.mark.parametrize("config,piece", [
    ("rnd-m7-n4", "rnd"),
    ("rand-m7-x3", "x3"),
    ("rand-m", "m"),
    ("rand-m7.5", "m7.5"),
    ("rand-n-2", "n"),
    ("rand--m7", ""),
    ("rand-p1.5", "p1.5"),
    ("rand-mstdfoo", "mstdfoo"),
    ("rand-inc1-tweights", "tweights"),
])
def test_rand_augment_rejects_malformed_config(config, piece):
    with pytest.raises(ValueError, match=re.escape(repr(piece))):
        RA.RandAugment(config)


@pytest.mark.parametrize("name", sorted(timm_aa.LEVEL_TO_ARG.keys() & RA._RAND_OPS.keys()))
def test_rand_augment_levels_match_timm(name, monkeypatch):
    ours = RA._RAND_OPS[name][0]
    theirs = timm_aa.LEVEL_TO_ARG[name]
    if theirs is None:
        assert ours is None
        return
    hparams = dict(timm_aa._HPARAMS_DEFAULT)
    for level in np.linspace(0.0, 10.0, 21):
        # timm negates when random.random() > 0.5: pin both outcomes to get the two possible arguments.
        expected = set()
        for draw in (0.25, 0.75):
            monkeypatch.setattr(timm_aa.random, "random", lambda: draw)
            expected.add(theirs(level, hparams)[0])
        got = {ours(level, gen(s)) for s in range(16)}
        assert got == expected, f"level {level}"


PIL_CASES = [
    ("AutoContrast", None), ("Equalize", None), ("Invert", None), ("Rotate", 17.0), ("Rotate", -30.0),
    ("Posterize", 2), ("Posterize", 8), ("Solarize", 100), ("Solarize", 256), ("SolarizeAdd", 77), ("SolarizeAdd", 110),
    ("Color", 1.7), ("Color", 0.2), ("Contrast", 1.6), ("Contrast", 0.3), ("Brightness", 1.5),
    ("Sharpness", 1.9), ("Sharpness", 0.1), ("ShearX", 0.3), ("ShearY", -0.2), ("TranslateXRel", 0.3),
    ("TranslateYRel", -0.45),
]


@pytest.mark.parametrize("name,arg", PIL_CASES)
def test_rand_augment_ops_match_timm_pil(name, arg):
    frame = smooth_clip((1, 3, 60, 80), seed=1)[0]
    image = Image.fromarray(frame.permute(1, 2, 0).numpy())
    args = () if arg is None else (arg,)
    ref = timm_aa.NAME_TO_OP[name](image, *args, fillcolor=RA.IMG_MEAN_UINT8, resample=Image.BILINEAR)
    ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1)
    out = RA._RAND_OPS[name][1](frame.expand(2, 3, 60, 80), arg, RA.IMG_MEAN_UINT8)
    assert out.shape == (2, 3, 60, 80) and out.dtype == torch.uint8
    assert int((out[1].int() - ref.int()).abs().max()) <= 1  # PIL's own rounding differs by 1 at most


def test_posterize_zero_bits_is_black():
    # PosterizeIncreasing at magnitude 10 keeps 0 bits (older PIL: black; PIL >= 10 refuses).
    out = RA._RAND_OPS["PosterizeIncreasing"][1](random_clip(), 0, RA.IMG_MEAN_UINT8)
    assert bool((out == 0).all())


def test_rand_augment_probability_and_count():
    clip = smooth_clip()
    assert torch.equal(RA.RandAugment("rand-m9-n4-p0.0")(clip, gen(0)), clip)
    assert torch.equal(RA.RandAugment("rand-m9-n0")(clip, gen(0)), clip)
    changed = sum(not torch.equal(RA.RandAugment("rand-m9-n2-p1.0")(clip, gen(s)), clip) for s in range(20))
    assert changed >= 18


def test_rand_augment_draws_n_ops_uniformly(monkeypatch):
    calls = []

    def recorder(name):
        return None, lambda clip, arg, fill: calls.append(name) or clip

    monkeypatch.setattr(RA, "_RAND_OPS", {name: recorder(name) for name in RA._RAND_OPS})
    clip = random_clip()
    ra = RA.RandAugment("rand-m9-n4-p1.0-inc1")
    for seed in range(100):
        calls.clear()
        ra(clip, gen(seed))
        assert len(calls) == 4
    calls.clear()
    half = RA.RandAugment("rand-m9-n4-inc1")  # each picked op runs with probability 0.5
    for seed in range(300):
        half(clip, gen(seed))
    assert 500 < len(calls) < 700
    assert set(calls) == set(RA.RAND_INCREASING_TRANSFORMS)


def test_rand_augment_magnitude_sampling():
    fixed = RA.RandAugment("rand-m7")
    assert {fixed._magnitude(gen(s)) for s in range(5)} == {7.0}
    noisy = [RA.RandAugment("rand-m9-mstd5")._magnitude(gen(s)) for s in range(200)]
    assert min(noisy) == 0.0 and max(noisy) == 10.0 and len(set(noisy)) > 50  # clipped to [0, 10]
    uniform = [RA.RandAugment("rand-m6-mstd101")._magnitude(gen(s)) for s in range(200)]
    assert 0.0 <= min(uniform) < 1.0 and 5.0 < max(uniform) <= 6.0
    capped = [RA.RandAugment("rand-m12-mmax15-mstd5")._magnitude(gen(s)) for s in range(200)]
    assert max(capped) == 15.0
