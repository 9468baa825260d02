"""Tests for masking_generator.tube_mask / random_mask."""
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from masking_generator import MASKS, random_mask, tube_mask  # noqa: E402

CASES = [
    ((8, 14, 14), 0.9),
    ((8, 14, 14), 0.75),
    ((8, 14, 14), 0.5),
    ((4, 7, 5), 0.9),
    ((4, 7, 5), 0.75),
    ((4, 7, 5), 0.5),
    ((2, 3, 3), 0.6),
    ((1, 4, 4), 0.0),
]


def tube_count(grid, ratio):
    t, h, w = grid
    return t * int(ratio * h * w)


def random_count(grid, ratio):
    t, h, w = grid
    return int(ratio * t * h * w)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Shapes and exact counts
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid,ratio", CASES)
def test_tube_shape_and_count(grid, ratio):
    t, h, w = grid
    m = tube_mask(6, grid, ratio, generator=gen(0))
    assert m.shape == (6, t * h * w)
    assert m.dtype == torch.bool
    assert m.sum(dim=1).tolist() == [tube_count(grid, ratio)] * 6


@pytest.mark.parametrize("grid,ratio", CASES)
def test_random_shape_and_count(grid, ratio):
    t, h, w = grid
    m = random_mask(6, grid, ratio, generator=gen(0))
    assert m.shape == (6, t * h * w)
    assert m.dtype == torch.bool
    assert m.sum(dim=1).tolist() == [random_count(grid, ratio)] * 6


def test_registry():
    assert MASKS["tube"] is tube_mask
    assert MASKS["random"] is random_mask


# ----------------------------------------------------------------------------------------------
# Tube structure
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid,ratio", [((8, 14, 14), 0.9), ((4, 7, 5), 0.75), ((4, 7, 5), 0.5)])
def test_tube_same_spatial_mask_every_time_slot(grid, ratio):
    t, h, w = grid
    b = 8
    m = tube_mask(b, grid, ratio, generator=gen(1)).view(b, t, h * w)  # (t, h, w) token order
    assert torch.equal(m, m[:, :1].expand(b, t, h * w))
    assert m[:, 0].sum(dim=1).tolist() == [int(ratio * h * w)] * b


@pytest.mark.parametrize("mask_fn", [tube_mask, random_mask])
@pytest.mark.parametrize("grid,ratio", [((8, 14, 14), 0.9), ((4, 7, 5), 0.5)])
def test_different_clips_get_different_masks(mask_fn, grid, ratio):
    b = 8
    m = mask_fn(b, grid, ratio, generator=gen(2))
    distinct = {tuple(row.tolist()) for row in m}
    assert len(distinct) == b


def test_random_mask_is_not_tube():
    t, h, w = 8, 14, 14
    m = random_mask(8, (t, h, w), 0.9, generator=gen(3)).view(8, t, h * w)
    assert not torch.equal(m, m[:, :1].expand(8, t, h * w))


# ----------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_fn", [tube_mask, random_mask])
def test_same_seed_same_mask_different_seed_differs(mask_fn):
    grid, ratio = (8, 14, 14), 0.9
    a = mask_fn(4, grid, ratio, generator=gen(123))
    b = mask_fn(4, grid, ratio, generator=gen(123))
    c = mask_fn(4, grid, ratio, generator=gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("mask_fn", [tube_mask, random_mask])
def test_generator_state_advances(mask_fn):
    g = gen(7)
    a = mask_fn(4, (4, 7, 5), 0.5, generator=g)
    b = mask_fn(4, (4, 7, 5), 0.5, generator=g)
    assert not torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# Uniformity
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_fn,count_fn", [(tube_mask, tube_count), (random_mask, random_count)])
@pytest.mark.parametrize("grid,ratio", [((4, 7, 5), 0.5), ((4, 7, 5), 0.75), ((2, 14, 14), 0.9)])
def test_each_position_masked_with_ratio_frequency(mask_fn, count_fn, grid, ratio):
    t, h, w = grid
    draws = 2000
    m = mask_fn(draws, grid, ratio, generator=gen(11))  # 2000 independent clips
    freq = m.float().mean(dim=0)
    expected = count_fn(grid, ratio) / (t * h * w)  # exact per-position probability
    assert abs(expected - ratio) < 0.05
    assert (freq - expected).abs().max().item() < 0.05
    assert (freq - ratio).abs().max().item() < 0.05
