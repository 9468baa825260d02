"""Tiny models and skip marks shared by the tests."""
from typing import Sequence

import pytest
import timm
import torch

from datasets.decoding import CPU_BACKENDS
from engine_for_pretraining import Objective
from modeling_pretrain import DinoTeacher, PretrainVisionTransformer

# 4 frames of 32x32 in 2x16x16 tubes: a (2, 2, 2) token grid.
FRAMES, SIZE, GRID = 4, 32, (2, 2, 2)
TEACHER_DIM = 24


def tiny_pretrain(target_type: str = "mlp", loss_func: str = "SWAV", **kwargs) -> PretrainVisionTransformer:
    # SIGMA-MLP at 16 features instead of 256; pixel targets get the width the model derives.
    cfg = dict(img_size=SIZE, patch_size=16, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
               decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
               decoder_num_classes=16 if target_type == "mlp" else None, teacher_dim=TEACHER_DIM,
               all_frames=FRAMES, tubelet_size=2, target_type=target_type, loss_func=loss_func, num_prototypes=8)
    cfg.update(kwargs)
    return PretrainVisionTransformer(**cfg)


def tiny_objective(model, **settings) -> Objective:
    """The tests' objective: 3 Sinkhorn iterations."""
    return Objective.of(model, **{"sinkhorn_eps": 0.05, "sinkhorn_iterations": 3, **settings})


def tiny_teacher(version: str = "dino_v1") -> DinoTeacher:
    """DINO v1-like (patch 16, class token) or DINOv2-like (patch 8, 4 registers) random ViT."""
    if version == "dino_v1":
        vit = timm.models.vision_transformer.VisionTransformer(
            img_size=SIZE, patch_size=16, embed_dim=TEACHER_DIM, depth=1, num_heads=2, num_classes=0)
    else:
        vit = timm.models.vision_transformer.VisionTransformer(
            img_size=SIZE, patch_size=8, embed_dim=TEACHER_DIM, depth=1, num_heads=2, num_classes=0,
            reg_tokens=4, no_embed_class=True)
    return DinoTeacher(vit, grid=GRID[1:])


def clips(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, FRAMES, SIZE, SIZE)


def _torchcodec_missing() -> str:
    """Why the torchcodec tests cannot run here ('' when they can)."""
    from datasets.decoding import _torchcodec_decoder_class
    try:
        _torchcodec_decoder_class()
    except ImportError as e:
        return str(e)
    return ""


needs_torchcodec = pytest.mark.skipif(bool(_torchcodec_missing()), reason=_torchcodec_missing())


def backend_params(names: Sequence[str] = CPU_BACKENDS, leave_out: Sequence[str] = ()) -> list:
    """pytest parameters of decoding backends from the registry (datasets.decoding), torchcodec's
    skipped where it cannot load."""
    return [pytest.param(b, marks=needs_torchcodec) if b.startswith("torchcodec") else b
            for b in names if b not in leave_out]
