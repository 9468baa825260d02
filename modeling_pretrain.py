"""SIGMA / VideoMAE pretraining model: tube-masked encoder, shallow decoder, projection, prototypes.

Names and shapes of every parameter equal the official SIGMA checkpoints (``encoder.*``,
``decoder.*``, ``encoder_to_decoder``, ``mask_token``, projection ``head.{0,2,4,6}``,
``prototypes``), so their state dicts load with ``strict=True``.

The model's forward produces what the objective needs and nothing else:
    pred           [B, N_mask, D]  decoder features (or pixels) of the masked tubes
    logits_target  [B*N_mask, K]   cos(projected target, prototype) / temperature (SWAV only)
    logits_pred    [B*N_mask, K]   cos(decoder feature, detached prototype) / temperature (SWAV only)
The two score matrices live in buffers the model keeps (valid until its next forward).
Target building, Sinkhorn codes and the loss live in engine_for_pretraining (its `Objective`).
"""
from functools import partial
from typing import Callable, Dict, NamedTuple, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from modeling_finetune import (VIT_SIZES, Block, MaskIndex, VisionTransformer, run_blocks, sincos_position_table,
                               take_tokens)
from objective_kernels import ScoresInto

MODELS: Dict[str, Callable[..., nn.Module]] = {}

TARGET_TYPES = ("pixel", "mlp", "dino_v1", "dino_v2")
LOSS_FUNCS = ("L2", "SWAV")
# (target_type, loss_func) pairs with a meaning: an L2 loss against a learnable projection
# collapses to a constant, and pixel targets have no projection to cluster.
VALID_OBJECTIVES = {("pixel", "L2"), ("mlp", "SWAV"), ("dino_v1", "SWAV"), ("dino_v2", "SWAV"),
                    ("dino_v1", "L2"), ("dino_v2", "L2")}


MLP_FEATURE_DIM = 256  # SIGMA-MLP: width of the projection, the decoder output and the prototypes


def decoder_width(target_type: str, tubelet_size: int, patch_size: int, teacher_dim: Optional[int] = None) -> int:
    """What the decoder predicts per masked tube: its pixels (pixel), SIGMA-MLP features (mlp) or the
    frozen teacher's features (dino_*, `teacher_dim` wide)."""
    if target_type == "pixel":
        return 3 * tubelet_size * patch_size ** 2
    if target_type == "mlp":
        return MLP_FEATURE_DIM
    if teacher_dim is None:
        raise ValueError(f"target_type {target_type!r}: the decoder width is the teacher's, give teacher_dim")
    return teacher_dim


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    MODELS[fn.__name__] = fn
    return fn


class PretrainOutput(NamedTuple):
    pred: torch.Tensor
    logits_target: Optional[torch.Tensor]
    logits_pred: Optional[torch.Tensor]


def _xavier_init(m: nn.Module) -> None:
    """Initialisation of the official pretraining encoder and decoder."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def projection_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    """SIGMA-MLP projection of normalised pixel tubes: in-1024-1024-512-out with GELU."""
    return nn.Sequential(nn.Linear(in_dim, 1024), nn.GELU(), nn.Linear(1024, 1024), nn.GELU(),
                         nn.Linear(1024, 512), nn.GELU(), nn.Linear(512, out_dim))


class PretrainDecoder(nn.Module):
    def __init__(self, embed_dim: int, depth: int, num_heads: int, num_classes: int, mlp_ratio: float,
                 qkv_bias: bool, drop_path_rate: float, norm_layer: Callable[[int], nn.Module],
                 use_checkpoint: bool):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=dpr[i],
                                           norm_layer=norm_layer) for i in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor, num_predicted: int) -> torch.Tensor:
        x = run_blocks(self.blocks, x, self.use_checkpoint)  # [B, N, C_d]
        return self.head(self.norm(x[:, -num_predicted:]))  # [B, N_mask, num_classes]


class PretrainVisionTransformer(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, encoder_embed_dim: int = 768,
                 encoder_depth: int = 12, encoder_num_heads: int = 12, decoder_num_classes: Optional[int] = None,
                 decoder_embed_dim: int = 384, decoder_depth: int = 4, decoder_num_heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
                 all_frames: int = 16, tubelet_size: int = 2, use_checkpoint: bool = False,
                 target_type: str = "pixel", loss_func: str = "L2", num_prototypes: int = 3000,
                 teacher_dim: Optional[int] = None):
        """decoder_num_classes: None derives it (`decoder_width`; dino_* targets need `teacher_dim`)."""
        super().__init__()
        if (target_type, loss_func) not in VALID_OBJECTIVES:
            raise ValueError(f"target_type={target_type!r} with loss_func={loss_func!r} is not a supported "
                             f"objective; use one of {sorted(VALID_OBJECTIVES)}")
        self.target_type, self.loss_func = target_type, loss_func
        self.num_prototypes = num_prototypes
        self.tubelet_size, self.patch_size = tubelet_size, patch_size
        if decoder_num_classes is None:
            decoder_num_classes = decoder_width(target_type, tubelet_size, patch_size, teacher_dim)

        self.encoder = VisionTransformer(
            img_size=img_size, patch_size=patch_size, num_classes=0, embed_dim=encoder_embed_dim,
            depth=encoder_depth, num_heads=encoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate, norm_layer=norm_layer, all_frames=all_frames,
            tubelet_size=tubelet_size, use_checkpoint=use_checkpoint, use_mean_pooling=False)
        self.encoder.apply(_xavier_init)
        self.decoder = PretrainDecoder(decoder_embed_dim, decoder_depth, decoder_num_heads, decoder_num_classes,
                                       mlp_ratio, qkv_bias, drop_path_rate, norm_layer, use_checkpoint)
        self.decoder.apply(_xavier_init)
        self.encoder_to_decoder = nn.Linear(encoder_embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self.register_buffer("pos_embed", sincos_position_table(self.encoder.num_patches, decoder_embed_dim),
                             persistent=False)
        if target_type == "mlp":
            self.head = projection_mlp(3 * tubelet_size * patch_size ** 2, decoder_num_classes)
        elif loss_func == "SWAV":
            self.head = nn.Identity()  # SIGMA-DINO: the frozen teacher is the projection
        if loss_func == "SWAV":
            self.prototypes = nn.Parameter(torch.randn(num_prototypes, decoder_num_classes))
        self._score_buffers: Dict[str, torch.Tensor] = {}  # see objective_kernels.ScoresInto; not model state

    def no_weight_decay(self) -> set:
        return {"mask_token", "pos_embed"}

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Project the prototypes back onto the unit sphere (every step, before scoring)."""
        self.prototypes.copy_(F.normalize(self.prototypes, dim=1))

    def decode(self, videos: torch.Tensor, bool_masked_pos: Union[torch.Tensor, MaskIndex],
               tubes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encode visible tokens, decode mask tokens: [B, N_mask, decoder_num_classes]."""
        index = MaskIndex.of(bool_masked_pos)
        B = index.visible.shape[0]
        N = index.visible.shape[1] + index.masked.shape[1]
        x_vis = self.encoder.forward_tokens(videos, visible=index.visible, tubes=tubes)  # [B, N_vis, C_e]
        x_vis = self.encoder_to_decoder(x_vis)  # [B, N_vis, C_d]
        C = x_vis.shape[-1]
        pos = self.pos_embed if N == self.pos_embed.shape[1] else sincos_position_table(N, C).to(videos.device)
        pos = pos.to(x_vis.dtype).expand(B, -1, -1)  # [B, N, C_d]
        pos_vis = take_tokens(pos, index.visible)  # [B, N_vis, C_d]
        pos_mask = take_tokens(pos, index.masked)  # [B, N_mask, C_d]
        # Visible tokens first, then one mask token per masked position, in token order.
        x = torch.cat([x_vis + pos_vis, self.mask_token.to(x_vis.dtype) + pos_mask], dim=1)  # [B, N, C_d]
        return self.decoder(x, pos_mask.shape[1])

    def project(self, targets: torch.Tensor) -> torch.Tensor:
        """The projection of the targets into the decoder's feature space: [B, N_mask, D_t] ->
        [B, N_mask, D] (SIGMA-MLP: the trained MLP on pixel tubes; SIGMA-DINO: the identity, the
        frozen teacher having projected already)."""
        return self.head(targets)

    def prototype_logits(self, x: torch.Tensor, temperature: float, detach: bool = False,
                         side: Optional[str] = None) -> torch.Tensor:
        """[M, D] features -> [M, K] fp32 cosines with the (unit) prototypes / `temperature`.

        The 1/T rides on the small [K, D] prototype matrix, which saves a pass (and its gradient)
        over the [M, K] score matrix. fp32 outside autocast: with K = 3000, bf16 scores change ~1.6%
        of the Sinkhorn argmax codes against fp32 (the official scores are fp16/fp32).
        `detach`: scores that do not train the prototypes (the decoder side). `side`: write them
        into the model's kept buffer of that name (`ScoresInto`; valid until that side's next
        scores) rather than a fresh tensor.
        """
        with torch.autocast(x.device.type, enabled=False):
            prototypes = self.prototypes.float() / temperature  # [K, D]
            if detach:
                prototypes = prototypes.detach()
            features = F.normalize(x.float(), dim=-1)  # [M, D]
            if side is None or torch.compiler.is_compiling():  # compiled graphs plan their own memory
                return features @ prototypes.t()
            return ScoresInto.apply(features, prototypes, self._score_buffers, side)  # [M, K]

    def forward(self, videos: torch.Tensor, bool_masked_pos: Union[torch.Tensor, MaskIndex],
                targets: Optional[torch.Tensor] = None, tubes: Optional[torch.Tensor] = None,
                temperature: float = 0.1) -> PretrainOutput:
        """
        Args:
            videos: [B, 3, T, H, W] ImageNet-normalised clips.
            bool_masked_pos: [B, N] bool, True = masked; the same count in every clip. Or its
                `MaskIndex`, built once per batch (no host sync here).
            targets: [B, N_mask, D_t] per-tube targets of the masked tokens (projection input);
                required for SWAV.
            tubes: optional `patchify(videos)`, shared with target building.
            temperature: of the swapped prediction's softmax (the objective's).
        """
        pred = self.decode(videos, bool_masked_pos, tubes)  # [B, N_mask, D]
        if self.loss_func == "L2":
            return PretrainOutput(pred, None, None)
        if targets is None:
            raise ValueError("the SWAV objective needs the masked-tube targets")
        proj = self.project(targets)  # [B, N_mask, D]
        self.normalize_prototypes()
        # Only the target side trains the prototypes.
        logits_target = self.prototype_logits(proj.flatten(0, 1), temperature, side="target")  # [B*N_mask, K]
        logits_pred = self.prototype_logits(pred.flatten(0, 1), temperature, detach=True, side="pred")
        return PretrainOutput(pred, logits_target, logits_pred)


# Decoder width of each encoder size (half the encoder), as the official factories.
DECODER_SIZES = {"tiny": (96, 3), "small": (192, 3), "base": (384, 6), "large": (512, 8), "huge": (640, 8)}


def _pretrain(size: str, **kwargs) -> PretrainVisionTransformer:
    embed_dim, depth, num_heads = VIT_SIZES[size]
    decoder_dim, decoder_heads = DECODER_SIZES[size]
    return PretrainVisionTransformer(patch_size=16, encoder_embed_dim=embed_dim, encoder_depth=depth,
                                     encoder_num_heads=num_heads, decoder_embed_dim=decoder_dim,
                                     decoder_num_heads=decoder_heads, mlp_ratio=4, qkv_bias=True,
                                     norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)


@register
def pretrain_videomae_tiny_patch16_224(**kwargs) -> PretrainVisionTransformer:
    return _pretrain("tiny", **kwargs)


@register
def pretrain_videomae_small_patch16_224(**kwargs) -> PretrainVisionTransformer:
    return _pretrain("small", **kwargs)


@register
def pretrain_videomae_base_patch16_224(**kwargs) -> PretrainVisionTransformer:
    return _pretrain("base", **kwargs)


@register
def pretrain_videomae_large_patch16_224(**kwargs) -> PretrainVisionTransformer:
    return _pretrain("large", **kwargs)


@register
def pretrain_videomae_huge_patch16_224(**kwargs) -> PretrainVisionTransformer:
    return _pretrain("huge", **kwargs)


class DinoTeacher(nn.Module):
    """Frozen image ViT (DINO v1 or DINOv2) giving one feature per student token of a frame.

    Wraps a timm VisionTransformer: drops its prefix tokens (class and, for DINOv2, register
    tokens) and, when its patch grid differs from the student's (DINOv2's 14-pixel patches give
    16x16 at 224 against the student's 14x14), resizes the grid bilinearly as the official code.
    """

    def __init__(self, vit: nn.Module, grid: tuple):
        super().__init__()
        self.vit = vit.requires_grad_(False)
        self.grid = tuple(grid)  # student (H/p, W/p)
        self.eval()

    def train(self, mode: bool = True) -> "DinoTeacher":
        return super().train(False)  # always frozen, also inside model.train()

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """[F, 3, H, W] ImageNet-normalised frames -> [F, H/p * W/p, C] fp32 patch features.

        fp32 outside autocast, as the official teacher (bf16 features move Sinkhorn codes).
        """
        with torch.autocast(frames.device.type, enabled=False):
            tokens = self.vit.forward_features(frames.float())[:, self.vit.num_prefix_tokens:]  # [F, h*w, C]
        F_, n, C = tokens.shape
        side = int(round(n ** 0.5))
        if (side, side) == self.grid:
            return tokens
        grid = tokens.transpose(1, 2).reshape(F_, C, side, side)
        grid = F.interpolate(grid, size=self.grid, mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2)


# (target_type, --distillation_teacher) -> timm architecture of the published DINO weights.
TEACHER_ARCHS = {
    ("dino_v1", "dino_s"): "vit_small_patch16_224", ("dino_v1", "dino_b"): "vit_base_patch16_224",
    ("dino_v2", "dino_s"): "vit_small_patch14_reg4_dinov2", ("dino_v2", "dino_b"): "vit_base_patch14_reg4_dinov2",
    ("dino_v2", "dino_l"): "vit_large_patch14_reg4_dinov2",
}
TEACHER_DIMS = {"dino_s": 384, "dino_b": 768, "dino_l": 1024}


def teacher_arch(target_type: str, teacher: str) -> str:
    """The timm architecture of the published weights of --distillation_teacher `teacher`.

    Raises ValueError naming the teachers published for `target_type` when there is none.
    """
    arch = TEACHER_ARCHS.get((target_type, teacher))
    if arch is None:
        raise ValueError(f"no published {target_type} weights for --distillation_teacher {teacher}; "
                         f"choose from {sorted(t for v, t in TEACHER_ARCHS if v == target_type)}")
    return arch
