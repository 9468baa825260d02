"""Metrics of SEVERE's task-shift rows: Charades mAP and UCFRep repetition-counting errors.

Charades mAP is the mean over classes of the average precision of the classes' scores over the
test videos. Two published computations differ only in how tied scores are ranked:
- "grouped" (SEVERE: SlowFast-ssl-vssl's slowfast/utils/meters.py get_map, which calls
  sklearn.metrics.average_precision_score): videos with equal scores form one threshold, and
  AP = sum over thresholds of (recall gain) x precision there;
- "ordered" (the dataset's official Charades_v1_classify.m, THUMOSeventclspr): a test video with no
  annotated action at all gets -inf in every class first (the official script, and its Python port
  `charades_map` in gsig/charades-algorithms pytorch/utils/map.py, do the same: such videos rank
  last in every class, below every scored one); then videos sorted by descending score with
  MATLAB's stable sort (ties keep the input order), AP = mean over the positives of the precision
  at each one's rank.
Both give the same value without ties and without unannotated videos (grouped mode keeps those
videos' scores as negatives, as SEVERE's get_map does). Classes with no positive video are left out of the mean,
as get_map does (the official script would return NaN for them: 0 / 0); `num_classes_scored`
says how many classes were averaged. SEVERE tests Charades with 10 temporal x 3 spatial views per
video merged by max (configs/Charades/*: ENSEMBLE_METHOD max), sigmoid scores of a BCE head.

Repetition counting follows SEVERE's Repetition-Counting (from Zhang et al., CVPR 2020): "MAE" is
the mean over videos of |predicted - true| / true (normalised by the true count), MAE_std its
standard deviation, OBOA the fraction of videos whose count is off by at most one; MAEP / MAEN
average the normalised error over the over- and under-counted videos (0 where there is none, as
SEVERE's AverageMeter reports). As SEVERE's test scoring (Repetition-Counting/val_2stream.py,
`val_epoch`, fmthoker/SEVERE-BENCHMARK at 8cedb9cb2fb0583a1d560df8e0c853e7487d3aa2) does, each
predicted count is rounded to an integer first (Python's round(): half to even; torch.round is
the same) and every error is computed on the rounded counts.
"""
import math
from typing import Dict

import torch

TIES = ("grouped", "ordered")


def average_precision(scores: torch.Tensor, labels: torch.Tensor, ties: str = "grouped") -> float:
    """AP of one class: scores [N] (higher = more confident), labels [N] (nonzero = positive).

    NaN when there is no positive.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    scores, positive = scores.double().reshape(-1), labels.reshape(-1) != 0
    if scores.shape != positive.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(positive.shape)} differ in length")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    npos = int(positive.sum())
    if npos == 0:
        return float("nan")
    order = torch.sort(-scores, stable=True).indices  # descending; ties in input order
    hits = positive[order].double()
    tp = hits.cumsum(0)  # [N] true positives in the first i + 1
    precision = tp / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    if ties == "ordered":
        return float((precision * hits).sum() / npos)
    sorted_scores = scores[order]
    last = torch.ones_like(hits, dtype=torch.bool)  # the last video of each run of equal scores
    last[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    recall = tp[last] / npos
    gain = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((gain * precision[last]).sum())


def charades_map(scores: torch.Tensor, labels: torch.Tensor, ties: str = "grouped") -> Dict[str, object]:
    """Mean AP over the classes with at least one positive video.

    Args:
        scores: [N, K] per-video class scores (logits or probabilities: only the order matters).
        labels: [N, K] multi-hot targets.
        ties: "grouped" (SEVERE / sklearn) or "ordered" (official Charades_v1_classify.m, with
            the videos that have no annotated action moved to -inf in every class).
    Returns:
        {"mAP": %, "ap": [K] per-class AP in % (None where the class has no positive),
         "num_classes_scored": classes averaged}.
    """
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be [N, K]")
    if ties == "ordered":  # the official rule: a video with no annotated action ranks last everywhere
        scores = scores.double().masked_fill((labels == 0).all(1, keepdim=True), float("-inf"))
    aps = [average_precision(scores[:, k], labels[:, k], ties) for k in range(scores.shape[1])]
    scored = [ap for ap in aps if not math.isnan(ap)]
    if not scored:
        raise ValueError("no class has a positive video: mAP is undefined")
    return {"mAP": 100.0 * sum(scored) / len(scored),
            "ap": [None if math.isnan(ap) else 100.0 * ap for ap in aps], "num_classes_scored": len(scored)}


def counting_metrics(predicted: torch.Tensor, target: torch.Tensor) -> Dict[str, float]:
    """SEVERE's repetition-counting errors, of the predicted counts rounded to integers (half to even).

    Args:
        predicted: [N] predicted counts (floats; rounded here, p below is the rounded count).
        target: [N] true counts, all > 0.
    Returns:
        {"mae": mean |p - t| / t, "mae_std": its (population) std, "obo": fraction with
         |p - t| <= 1, "mae_over": mean normalised error where p > t (0 if none), "mae_under":
         where p < t (0 if none), "abs_error": mean |p - t| (not normalised), "num_videos": N}.
    """
    p, t = torch.round(predicted.double().reshape(-1)), target.double().reshape(-1)
    if p.shape != t.shape or p.numel() == 0:
        raise ValueError(f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} must be equal "
                         "and non-empty")
    if (t <= 0).any():
        raise ValueError(f"true counts must be > 0 (the error is normalised by them); got {t[t <= 0].tolist()[:5]}")
    error = (p - t).abs()
    relative = error / t  # [N]

    def mean_where(mask: torch.Tensor) -> float:
        return float(relative[mask].mean()) if mask.any() else 0.0

    return {"mae": float(relative.mean()), "mae_std": float(relative.std(unbiased=False)),
            "obo": float((error <= 1).double().mean()), "mae_over": mean_where(p > t), "mae_under": mean_where(p < t),
            "abs_error": float(error.mean()), "num_videos": int(p.numel())}


def max_over_views(scores: torch.Tensor, video_index: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Merge test views by max (SEVERE's Charades ensemble): scores [M, K] of views of videos
    `video_index` [M] -> [num_videos, K]; a video without views stays -inf (ranked last)."""
    out = torch.full((num_videos, scores.shape[1]), float("-inf"), dtype=scores.dtype, device=scores.device)
    return out.scatter_reduce_(0, video_index[:, None].expand_as(scores), scores, reduce="amax")

