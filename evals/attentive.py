"""Attentive probes on frozen patch tokens: the V-JEPA pooler and a grid of them trained together.

A learnable query token cross-attends over the frozen encoder's tokens [B, N, D] and becomes the
pooled feature [B, D]; a linear layer classifies it. The layout and initialisation follow
facebookresearch/vjepa2 (src/models/attentive_pooler.py, src/models/utils/modules.py):
- `depth - 1` self-attention blocks over the tokens first (V-JEPA 2's evals use depth 4 and 16
  heads, `num_probe_blocks: 4` in configs/eval/vitl/*.yaml; V-JEPA 1's default is depth 1);
- one cross-attention block: q = q + xattn(q, norm1(tokens)), then q = q + mlp(norm2(q)); the
  query itself is not normalised and the cross-attention has no output projection;
- init: query tokens and every Linear of the pooler truncated normal (std 0.02), biases 0,
  LayerNorms (1, 0); each block's last projection divided by sqrt(2 * layer) (its depth); the
  classifier is a plain nn.Linear with PyTorch's default init. There is no norm after the pooled
  token: the LayerNorms sit inside the blocks.

V-JEPA 2 trains one such classifier per (lr, weight decay) pair on the same frozen features
(evals/video_classification_frozen/eval.py: 20 epochs, AdamW, cosine lr to 0, constant weight
decay, every classifier parameter decayed) and reports the best head. `AttentiveProbeGrid` holds
the H heads; `param_groups` gives one AdamW group per head, so one optimizer trains them all, and
`grid_loss` sums the heads' losses, so each head gets exactly the gradient of its own loss.

Heads are isolated from one another: a head whose loss is not finite is left out of the summed
loss (which stays finite while any head is alive) and gets NaN gradients; the training loop clips
each head's gradients on their own (`training_loop.clip_per_head`), so one head's NaN norm cannot
scale the others', and retires a head whose gradient norm is not finite: its parameter groups are
flagged "dead" (kept in the optimizer's state, so a resume remembers), its gradients are dropped
before every later step (its weights stay as they were, finite); the driver copies the flag into
the grid's `alive` buffer (saved with the weights), after which the head answers NaN, its loss is
left out of the sum and of the logged mean, and `select_best` never picks it.
"""
import math
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from modeling_finetune import Block, Mlp

# V-JEPA 2's video grid (configs/eval/vitl/ssv2.yaml, k400.yaml): lr in {5e-3, 3e-3, 1e-3, 3e-4, 1e-4}
# x weight decay in {0.01, 0.1, 0.4, 0.8}, as lr scales of a base lr of 1e-3.
VJEPA2_GRID: Tuple[Tuple[float, float], ...] = tuple(
    (lr_scale, wd) for wd in (0.01, 0.1, 0.4, 0.8) for lr_scale in (5.0, 3.0, 1.0, 0.3, 0.1))


class CrossAttention(nn.Module):
    """Queries [B, Q, D] attend over tokens [B, N, D]; no output projection (as V-JEPA's)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, Q, D = q.shape
        h = self.num_heads
        q = self.q(q).view(B, Q, h, D // h).transpose(1, 2)  # [B, h, Q, D/h]
        k, v = self.kv(x).view(B, x.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)  # [B, h, N, D/h]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, Q, D/h]
        return out.transpose(1, 2).reshape(B, Q, D)


class CrossAttentionBlock(nn.Module):
    """q + xattn(q, norm1(x)), then q + mlp(norm2(q))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.xattn = CrossAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q = q + self.xattn(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


class AttentivePooler(nn.Module):
    """Tokens [B, N, D] -> [B, num_queries, D] through learnable queries."""

    def __init__(self, dim: int, num_heads: int = 16, depth: int = 1, num_queries: int = 1,
                 mlp_ratio: float = 4.0, init_std: float = 0.02):
        super().__init__()
        if depth < 1 or num_queries < 1:
            raise ValueError(f"depth ({depth}) and num_queries ({num_queries}) must be >= 1")
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth - 1))
        self.cross_attention_block = CrossAttentionBlock(dim, num_heads, mlp_ratio)
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        trunc_normal_(self.query_tokens, std=std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():  # residual branches scaled down with depth (GPT-2 / V-JEPA)
            for layer, blk in enumerate(self.blocks, start=1):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))
            self.cross_attention_block.mlp.fc2.weight.div_(math.sqrt(2.0 * max(len(self.blocks), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)  # [B, N, D]
        q = self.query_tokens.expand(x.shape[0], -1, -1)  # [B, Q, D]
        return self.cross_attention_block(q, x)  # [B, Q, D]


class AttentiveClassifier(nn.Module):
    """Tokens [B, N, D] -> logits [B, num_classes]: one pooled query, then a linear layer."""

    def __init__(self, dim: int, num_classes: int, num_heads: int = 16, depth: int = 1):
        super().__init__()
        self.pooler = AttentivePooler(dim, num_heads=num_heads, depth=depth)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pooler(tokens)[:, 0])  # [B, num_classes]


class AttentiveProbeGrid(nn.Module):
    """H independent attentive classifiers, one per (lr_scale, weight_decay) of `grid`, on one token batch.

    Args:
        num_classes: K, the output width of every head (classes, or 1 for a regression target).
        dim: D, the encoder's token width.
        grid: [(lr_scale, weight_decay), ...]; lr_scale multiplies the scheduled lr of its head.
        num_heads, depth: attention heads and blocks of each pooler (V-JEPA 2: 16 and 4).
    """

    def __init__(self, num_classes: int, dim: int, grid: Sequence[Tuple[float, float]] = VJEPA2_GRID,
                 num_heads: int = 16, depth: int = 1):
        super().__init__()
        if not grid:
            raise ValueError("the grid needs at least one (lr_scale, weight_decay) pair")
        bad = [pair for pair in grid if len(pair) != 2 or pair[0] <= 0 or pair[1] < 0]
        if bad:
            raise ValueError(f"grid entries must be (lr_scale > 0, weight_decay >= 0), got {bad}")
        self.grid = [(float(lr), float(wd)) for lr, wd in grid]
        self.heads = nn.ModuleList(AttentiveClassifier(dim, num_classes, num_heads, depth) for _ in self.grid)
        # False for a head retired in training (diverged); saved with the weights, read by --eval.
        self.register_buffer("alive", torch.ones(len(self.grid), dtype=torch.bool))
        self._retired: set = set()  # heads already written to `alive` by `retire`

    def dead_heads(self) -> List[int]:
        return [h for h, alive in enumerate(self.alive.tolist()) if not alive]

    def retire(self, heads: Sequence[int]) -> None:
        """Mark `heads` as diverged (from the optimizer's "dead" groups, see `retired_heads`); no host sync."""
        for h in heads:
            if h not in self._retired:
                self.alive[h] = False
                self._retired.add(h)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, D] (frozen: detached by the caller or produced under no_grad) -> [H, B, K];
        a retired head answers NaN (left out of `grid_loss`, scored as diverged; still computed, so
        that DDP sees the same graph on every step)."""
        logits = torch.stack([head(tokens) for head in self.heads])  # [H, B, K]
        return torch.where(self.alive[:, None, None], logits, torch.full_like(logits, math.nan))

    def param_groups(self, no_decay_1d: bool = False) -> List[dict]:
        """AdamW groups: one per head ("head" index, "lr_scale", "wd_value" = its fixed weight decay).

        Args:
            no_decay_1d: exempt biases, norm weights and the query tokens from weight decay, as
                optim_factory.param_groups does for the backbone; each head then has a second group
                with wd_value 0. False (V-JEPA 2) decays every probe parameter.
        Returns:
            Dicts with "params", "lr_scale", "wd_value", "weight_decay" (= wd_value, the start
            value), "head" and "group_name"; the training loop must keep "weight_decay" at
            "wd_value" instead of applying its own schedule to these groups.
        """
        groups = []
        for h, (head, (lr_scale, wd)) in enumerate(zip(self.heads, self.grid)):
            split: Dict[str, list] = {"decay": [], "no_decay": []}
            for name, p in head.named_parameters():
                if p.requires_grad:
                    exempt = no_decay_1d and (p.ndim <= 1 or name.endswith("query_tokens"))
                    split["no_decay" if exempt else "decay"].append(p)
            for kind, members in split.items():
                if members:
                    value = wd if kind == "decay" else 0.0
                    groups.append({"params": members, "lr_scale": lr_scale, "wd_value": value,
                                   "weight_decay": value, "head": h, "group_name": f"probe_{h}_{kind}"})
        return groups


class _LiveSum(torch.autograd.Function):
    """Sum of the finite entries of x [H]; NaN if none is finite. Backward: the incoming gradient
    for the finite entries, NaN for the others, so that a diverged head's gradients are NaN
    whatever its loss function (a zero would pass through some losses as a finite zero and hide
    it), and the per-head clipping retires it. No host sync."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        live = torch.isfinite(x)
        ctx.save_for_backward(live)
        total = torch.where(live, x, torch.zeros_like(x)).sum()
        return torch.where(live.any(), total, torch.full_like(total, float("nan")))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (live,) = ctx.saved_tensors
        return torch.where(live, grad.expand(live.shape), torch.full(live.shape, float("nan"), dtype=grad.dtype,
                                                                     device=grad.device))


def grid_loss(logits: torch.Tensor, target: torch.Tensor,
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sum over heads of each head's loss, so head h's parameters get exactly d loss_h.

    A head whose loss is not finite is left out of the sum (its gradients come back NaN, see
    `_LiveSum`), so one diverged head neither poisons the loss the run checks nor the other heads;
    the sum is NaN only when no head is finite.

    Args:
        logits: [H, B, K] from AttentiveProbeGrid.
        target: what `loss_fn` takes for one head: [B] class indices (cross-entropy), [B, K]
            soft or multi-hot targets (e.g. F.binary_cross_entropy_with_logits).
    Returns:
        (the summed loss to backpropagate, the per-head losses [H], detached).
    """
    per_head = torch.stack([loss_fn(head_logits, target) for head_logits in logits])  # [H]
    return _LiveSum.apply(per_head), per_head.detach()


def retired_heads(param_groups: Sequence[dict]) -> List[int]:
    """The heads whose optimizer groups the training loop flagged "dead" (diverged), ascending."""
    return sorted({g["head"] for g in param_groups if g.get("dead")})


def grid_top1(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy (%) of every head: logits [H, B, K] (or probabilities), labels [B] -> [H]."""
    return 100.0 * (logits.argmax(-1) == labels).float().mean(1)


def select_best(per_head_metrics: Sequence[Dict[str, float]], key: str = "top1",
                higher_is_better: bool = True) -> Tuple[int, Dict[str, float]]:
    """(index, metrics) of the best head by `key`; ties go to the first (lowest index) head.
    Heads marked "diverged" are never picked.

    Args:
        per_head_metrics: one dict per head, e.g. [{"top1": 71.2, "top5": 90.1}, ...].
        key: the metric compared ("top1", "mAP", or "mae" with higher_is_better=False).
    """
    if not per_head_metrics:
        raise ValueError("select_best needs the metrics of at least one head")
    candidates = [i for i, m in enumerate(per_head_metrics) if not m.get("diverged")]
    if not candidates:
        raise ValueError(f"every one of the {len(per_head_metrics)} heads diverged: there is no head to report")
    missing = [i for i in candidates if key not in per_head_metrics[i]]
    if missing:
        raise KeyError(f"metric {key!r} missing for heads {missing}")
    values = {i: float(per_head_metrics[i][key]) for i in candidates}
    if any(math.isnan(v) for v in values.values()):
        raise ValueError(f"metric {key!r} is NaN for heads {[i for i, v in values.items() if math.isnan(v)]}")
    best = (max if higher_is_better else min)(candidates, key=lambda i: values[i])
    return best, dict(per_head_metrics[best])


class AttentiveProbe(nn.Module):
    """A frozen backbone in eval mode under an `AttentiveProbeGrid` on its patch tokens: one
    backbone forward per batch feeds every head. videos [B, 3, T, H, W] -> [H, B, K]."""

    def __init__(self, backbone: nn.Module, grid: AttentiveProbeGrid):
        super().__init__()
        self.backbone, self.grid = backbone.requires_grad_(False), grid

    def train(self, mode: bool = True) -> "AttentiveProbe":
        super().train(mode)
        self.backbone.eval()  # no dropout or drop path in the features
        return self

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            tokens = self.backbone.forward_tokens(videos)  # [B, N, D], after the final norm
        return self.grid(tokens)  # [H, B, K]

    def param_groups(self) -> List[dict]:
        return self.grid.param_groups()
