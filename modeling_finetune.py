"""The one video ViT backbone: tubelet patch embedding, sin-cos positions, pre-norm blocks.

The fine-tuning classifier is this backbone with mean pooling and a linear head; the
pretraining encoder (modeling_pretrain.py) is the same class run on visible tokens only, and
the pretraining decoder reuses `Block`. Parameter names follow the published VideoMAE / SIGMA
checkpoints (``patch_embed.proj``, ``blocks.N.attn.q_bias`` ...), so their state dicts load
without renaming. Reading weights into it (ours, official, transformers, VideoMAEv2, safetensors)
is `weights.py`'s job: this module imports torch and timm only.

Factories are kept in this module's own registry (`MODELS`), never in timm's: timm already owns
``vit_base_patch16_224`` and friends for image models.
"""
import copy
import math
from functools import partial
from typing import Callable, Dict, NamedTuple, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch.utils.checkpoint import checkpoint

MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    MODELS[fn.__name__] = fn
    return fn


def sincos_position_table(num_positions: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sinusoid table over the flattened (t, h, w) token index, as VideoMAE/SIGMA.

    Returns [1, num_positions, dim] float32; computed in float64 so it is exact to fp32 rounding.
    """
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]  # [N, 1]
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim  # [dim]
    angles = position / torch.pow(10000.0, exponent)  # [N, dim]
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)


class MaskIndex(NamedTuple):
    """A fixed-count token mask as ascending token positions, built once per batch.

    Boolean-mask indexing (`x[mask]`) has an output size that depends on the data, so every use
    waits for the device (a host sync) and breaks `torch.compile` graphs; gathering by these
    indices selects the same tokens in the same order without either.
    """
    visible: torch.Tensor  # [B, N_vis] long, False positions of the mask
    masked: torch.Tensor  # [B, N_mask] long, True positions

    @staticmethod
    def of(mask: Union[torch.Tensor, "MaskIndex"]) -> "MaskIndex":
        """The index of a [B, N] bool mask (True = masked, the same count in every row).

        Built from a host mask this costs no device sync (the data loader's masks are on the host
        until the batch moves); from a device mask it costs one, for the count.
        """
        if isinstance(mask, MaskIndex):
            return mask
        B, N = mask.shape
        counts = mask.sum(1)  # [B]
        if B and (counts != counts[0]).any():
            raise ValueError(f"every clip must mask the same number of tokens, got {counts.tolist()}")
        num_masked = int(counts[0]) if B else 0
        # A stable sort of the 0/1 mask: visible positions first, then masked, each in token order.
        order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices  # [B, N]
        return MaskIndex(order[:, :N - num_masked], order[:, N - num_masked:])

    def to(self, device: torch.device, non_blocking: bool = False) -> "MaskIndex":
        return MaskIndex(*(t.to(device, non_blocking=non_blocking) for t in self))


def take_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b]] for every b: [B, N, *rest] gathered by [B, K] positions -> [B, K, *rest]."""
    shape = index.shape + (1,) * (x.ndim - 2)
    return x.gather(1, index.reshape(shape).expand(*index.shape, *x.shape[2:]))


def patchify(videos: torch.Tensor, tubelet_size: int, patch_size: int) -> torch.Tensor:
    """Cut clips into space-time tubes.

    Args:
        videos: [B, C, T, H, W].
    Returns:
        [B, N, tubelet_size * patch_size**2, C] with N = (T/t)(H/p)(W/p) in (t, h, w) order and
        the pixels of a tube in (t, h, w) order: the layout of the official pixel targets.
    """
    B, C, T, H, W = videos.shape
    t, p = tubelet_size, patch_size
    if T % t or H % p or W % p:
        raise ValueError(f"clip {T}x{H}x{W} is not divisible into {t}x{p}x{p} tubes")
    x = videos.reshape(B, C, T // t, t, H // p, p, W // p, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # [B, T/t, H/p, W/p, t, p, p, C]
    return x.reshape(B, (T // t) * (H // p) * (W // p), t * p * p, C)


class PatchEmbed(nn.Module):
    """Non-overlapping Conv3d over (tubelet, patch, patch) tubes."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, tubelet_size: int = 2):
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.proj(videos).flatten(2).transpose(1, 2)  # [B, N, D]

    def embed_tubes(self, tubes: torch.Tensor) -> torch.Tensor:
        """Embed tubes already cut by `patchify` ([..., t*p*p, C] -> [..., D]).

        Equal to the Conv3d on those tubes; used by the pretraining encoder so that only the
        visible 10% of tubes are embedded (forward and weight gradient) instead of all of them.
        """
        weight = self.proj.weight.permute(0, 2, 3, 4, 1).flatten(1)  # [D, t*p*p*C]
        return F.linear(tubes.flatten(-2), weight, self.proj.bias)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/v biases (no k bias), as BEiT/VideoMAE."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)  # [B, N, 3C]
        q, k, v = qkv.view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)  # [B, N, C]
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """Apply blocks in order, recomputing activations in backward when `use_checkpoint`."""
    for blk in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
    return x


class VisionTransformer(nn.Module):
    """Video ViT on [B, 3, T, H, W] clips.

    With ``use_mean_pooling`` (the VideoMAE/SIGMA fine-tuning default) tokens are averaged and
    passed through ``fc_norm``; otherwise a final ``norm`` is applied to the tokens and they are
    averaged (the official code took token 0, an arbitrary patch, since there is no class token).
    ``num_classes=0`` gives a headless backbone (the pretraining encoder).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, fc_drop_rate: float = 0.0, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
                 use_learnable_pos_emb: bool = False, init_scale: float = 1.0, all_frames: int = 16,
                 tubelet_size: int = 2, use_checkpoint: bool = False, use_mean_pooling: bool = True):
        super().__init__()
        if img_size % patch_size or all_frames % tubelet_size:
            raise ValueError(f"img_size {img_size} / all_frames {all_frames} not divisible by "
                             f"patch {patch_size} / tubelet {tubelet_size}")
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.grid_size = (all_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = math.prod(self.grid_size)
        self.use_checkpoint = use_checkpoint
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, tubelet_size)
        if use_learnable_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
            trunc_normal_(self.pos_embed, std=0.02)
        else:
            # A buffer, not a parameter: published checkpoints do not store the fixed table.
            self.register_buffer("pos_embed", sincos_position_table(self.num_patches, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # stochastic depth decay rule
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], norm_layer)
            for i in range(depth)])
        self.norm = nn.Identity() if use_mean_pooling else norm_layer(embed_dim)
        self.fc_norm = norm_layer(embed_dim) if use_mean_pooling else None
        self.fc_dropout = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.pool_first_token = False  # transformers' / VideoMAEv2's use_mean_pooling=false; set by their loader
        self.apply(self._init_weights)
        if num_classes > 0:
            with torch.no_grad():
                self.head.weight.mul_(init_scale)
                self.head.bias.mul_(init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set:
        return {"pos_embed"}

    def position_table(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        """Position table for `num_tokens` tokens ([1, N, D]); recomputed when the clip size differs."""
        if num_tokens == self.pos_embed.shape[1]:
            return self.pos_embed
        if isinstance(self.pos_embed, nn.Parameter):
            raise ValueError(f"learnable pos_embed has {self.pos_embed.shape[1]} positions, input has "
                             f"{num_tokens} tokens; build the model for this clip size")
        return sincos_position_table(num_tokens, self.embed_dim).to(device)

    def forward_tokens(self, videos: torch.Tensor, visible: Optional[torch.Tensor] = None,
                       tubes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token features after the blocks (and ``norm``).

        Args:
            videos: [B, 3, T, H, W] normalised clips.
            visible: optional tokens to keep: [B, N] bool (True = keep; the same count in every
                row), or [B, N_kept] long ascending positions (`MaskIndex.visible`, no host sync).
                Only these tokens are embedded and attended.
            tubes: optional `patchify(videos)` output, to avoid cutting the clip twice.
        Returns:
            [B, N_kept, D].
        """
        if visible is None:
            x = self.patch_embed(videos)  # [B, N, D]
            x = x + self.position_table(x.shape[1], x.device).to(x.dtype)
        else:
            if tubes is None:
                tubes = patchify(videos, self.tubelet_size, self.patch_size)  # [B, N, t*p*p, C]
            B, N = tubes.shape[:2]
            if visible.dtype == torch.bool:
                visible = MaskIndex.of(~visible).visible  # the kept positions
            pos = self.position_table(N, tubes.device).expand(B, -1, -1)  # [B, N, D]
            x = self.patch_embed.embed_tubes(take_tokens(tubes, visible).flatten(0, 1))  # [B*N_vis, D]
            x = x.reshape(B, -1, x.shape[-1]) + take_tokens(pos, visible).to(x.dtype)  # [B, N_vis, D]
        x = self.pos_drop(x)
        x = run_blocks(self.blocks, x, self.use_checkpoint)
        return self.norm(x)

    def forward_features(self, videos: torch.Tensor) -> torch.Tensor:
        x = self.forward_tokens(videos)  # [B, N, D]
        if self.pool_first_token:
            return x[:, 0]  # token 0 after the final norm, as the checkpoint's own classifier saw it
        x = x.mean(1)  # [B, D]
        return self.fc_norm(x) if self.fc_norm is not None else x

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_dropout(self.forward_features(videos)))  # [B, num_classes]


class LinearProbe(nn.Module):
    """A frozen backbone in eval mode under a linear classifier on its pooled features.

    Truly linear: no gradient reaches the backbone, whose dropout / drop path stay off and whose
    norms are not trained; the head is a BatchNorm without affine parameters (feature
    standardisation, as in MAE's linear probe) followed by a Linear layer, or the Linear alone.
    With `train_norms` the final fc_norm / norm are trained too (the official variant).
    """

    def __init__(self, backbone: VisionTransformer, num_classes: int, batch_norm: bool = True,
                 train_norms: bool = False, init_scale: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.backbone.head = nn.Identity()
        self.train_norms = train_norms
        for name, p in self.backbone.named_parameters():
            p.requires_grad = train_norms and name.startswith(("fc_norm.", "norm."))
        dim = backbone.num_features
        linear = nn.Linear(dim, num_classes)
        trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        with torch.no_grad():
            linear.weight.mul_(init_scale)
        self.head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear) if batch_norm else linear

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.backbone.eval()  # no dropout, drop path or other train-time behaviour in the features
        return self

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.train_norms and torch.is_grad_enabled()):
            features = self.backbone.forward_features(videos)  # [B, D]
        return self.head(features)  # [B, num_classes]


class ModelEma(nn.Module):
    """Exponential moving average of a model's parameters (fp32 copy; buffers copied as they are).

    Evaluated and saved beside the model (checkpoint key "model_ema").
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        super().__init__()
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # Frozen parameters (a linear probe's backbone) never change: only trained ones are averaged.
        pairs = [(e, p) for e, p in zip(self.module.parameters(), model.parameters()) if p.requires_grad]
        torch._foreach_lerp_([e for e, _ in pairs], [p.detach().float() for _, p in pairs], 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.module(videos)


# (embed_dim, depth, num_heads) of the four published sizes, and DeiT's ViT-Ti for CPU-sized work.
VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16),
             "huge": (1280, 32, 16)}


def _vit(size: str, **kwargs) -> VisionTransformer:
    embed_dim, depth, num_heads = VIT_SIZES[size]
    return VisionTransformer(patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)


@register
def vit_tiny_patch16_224(**kwargs) -> VisionTransformer:
    return _vit("tiny", **kwargs)


@register
def vit_small_patch16_224(**kwargs) -> VisionTransformer:
    return _vit("small", **kwargs)


@register
def vit_base_patch16_224(**kwargs) -> VisionTransformer:
    return _vit("base", **kwargs)


@register
def vit_large_patch16_224(**kwargs) -> VisionTransformer:
    return _vit("large", **kwargs)


@register
def vit_huge_patch16_224(**kwargs) -> VisionTransformer:
    return _vit("huge", **kwargs)


def interpolate_pos_embed(table: torch.Tensor, grid: tuple, key: str) -> torch.Tensor:
    """Resize a learnable [1, t*h*w, D] position table to `grid` = (t, h, w), space then time.

    `key`: the table's name in its file, for the error when its length is no t x h x h grid.
    """
    t, h, w = grid
    n = table.shape[1]
    if n % (h * w) == 0:  # same frame size, other number of frames
        t0, h0 = n // (h * w), h
    elif n % t == 0 and round((n // t) ** 0.5) ** 2 == n // t:  # same frames, other size
        t0, h0 = t, round((n // t) ** 0.5)
    else:
        raise ValueError(f"checkpoint {key} has {n} positions: cannot read it as t x h x h for grid {grid}")
    D = table.shape[-1]
    x = table.reshape(t0, h0, n // (t0 * h0), D).permute(0, 3, 1, 2)  # [t0, D, h0, w0]
    x = F.interpolate(x.float(), size=(h, w), mode="bicubic", align_corners=False)  # [t0, D, h, w]
    x = x.permute(2, 3, 1, 0).reshape(h * w, D, t0)
    x = F.interpolate(x, size=t, mode="linear", align_corners=False)  # [h*w, D, t]
    return x.permute(2, 0, 1).reshape(1, t * h * w, D).to(table.dtype)
