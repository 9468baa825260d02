"""Token masks for masked video modelling: True = masked (predicted), False = visible.

Both masks hide an exact number of tokens in every clip, so the visible tokens of a batch stack
into one [B, N_vis, D] tensor without padding.
"""
from typing import Optional, Tuple

import torch


def _random_subset(batch: int, length: int, num_masked: int, generator: Optional[torch.Generator],
                   device: torch.device) -> torch.Tensor:
    """[batch, length] bool with exactly `num_masked` True per row, uniformly at random."""
    noise = torch.rand(batch, length, generator=generator, device=device)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # a uniform random permutation per row
    return ranks < num_masked


def tube_mask(batch: int, grid: Tuple[int, int, int], mask_ratio: float,
              generator: Optional[torch.Generator] = None, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """VideoMAE tube masking: one spatial mask repeated on every temporal slot.

    Args:
        grid: token grid (T/tubelet, H/patch, W/patch).
        mask_ratio: int(mask_ratio * H'W') tokens are masked per slot, as the official code.
    Returns:
        [batch, T' * H' * W'] bool in (t, h, w) token order.
    """
    t, h, w = grid
    per_frame = _random_subset(batch, h * w, int(mask_ratio * h * w), generator, device)  # [B, H'W']
    return per_frame.unsqueeze(1).expand(batch, t, h * w).reshape(batch, t * h * w)


def random_mask(batch: int, grid: Tuple[int, int, int], mask_ratio: float,
                generator: Optional[torch.Generator] = None, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Uniform random masking over all space-time tokens: int(mask_ratio * N) masked per clip."""
    n = grid[0] * grid[1] * grid[2]
    return _random_subset(batch, n, int(mask_ratio * n), generator, device)


MASKS = {"tube": tube_mask, "random": random_mask}
