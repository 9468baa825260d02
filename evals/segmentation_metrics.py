"""Scoring one clip of unsupervised video object segmentation (the TimeTuning protocol, Salehi et al.
ICCV 2023, as in SMSD75/Timetuning metrics.py): match clusters to ground-truth labels, then IoU.

- Hungarian ("clustering"): one cluster per label, the assignment that maximises the summed IoU
  (scipy.optimize.linear_sum_assignment); clusters left unmatched are read as background (id 0).
- Greedy many-to-one ("overclustering"): every cluster goes to the label holding the largest share
  of its pixels (precision; TimeTuning's overclustering uses --many_to_one --precision_based), so
  several clusters may form one object.
- The clip's mIoU is the mean IoU over the labels present in the clip's ground truth, background
  included (TimeTuning's `involve_bg=True`); the data set score is the mean over clips.
- Pixels of id 255 are void, as in DAVIS' annotations: in no label's IoU and in no cluster's count.

Everything here is numpy (and scipy for the assignment): `score_clip` is the job a process pool
runs for each clip while the main process computes the next clip's features; it also draws the
clip's overlay PNG. No torch import, so pool workers start fast.
"""
import os
from typing import Dict, Optional, Sequence

import numpy as np

from datasets.vos import VOID, palette

MATCHINGS = ("hungarian", "many_to_one")


def linear_sum_assignment(cost: np.ndarray):
    try:
        from scipy.optimize import linear_sum_assignment as lsa
    except ImportError as e:
        raise ImportError("Hungarian matching needs scipy: pip install scipy") from e
    return lsa(cost)


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_gt: int, num_pred: int) -> np.ndarray:
    """[num_gt, num_pred] pixel counts; gt and pred are label indices (any equal shapes)."""
    flat = gt.reshape(-1).astype(np.int64) * num_pred + pred.reshape(-1).astype(np.int64)
    return np.bincount(flat, minlength=num_gt * num_pred).reshape(num_gt, num_pred)


def iou_matrix(conf: np.ndarray) -> np.ndarray:
    """IoU [G, P] of ground-truth label g with cluster p, from the confusion matrix [G, P]."""
    union = conf.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - conf
    return conf / np.maximum(union, 1)


def hungarian_assignment(conf: np.ndarray, background: int) -> np.ndarray:
    """Label index [P] of every cluster: the IoU-maximising one-to-one matching; clusters without
    pixels are left out of it, unmatched clusters get `background` (the index read as id 0)."""
    assignment = np.full(conf.shape[1], background, dtype=np.int64)
    used = np.flatnonzero(conf.sum(0) > 0)
    rows, cols = linear_sum_assignment(-iou_matrix(conf[:, used]))
    assignment[used[cols]] = rows
    return assignment


def many_to_one_assignment(conf: np.ndarray) -> np.ndarray:
    """Label index [P] of every cluster: the label covering most of its pixels (highest precision;
    ties go to the lower label index)."""
    return conf.argmax(0)


def matched_iou(conf: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """IoU [G] of every ground-truth label once each cluster p is read as label assignment[p]
    (which may be G: a label absent from the clip, e.g. background in a clip without any)."""
    G = conf.shape[0]
    merged = np.zeros((G, G + 1), dtype=np.int64)  # [gt label, predicted label]
    np.add.at(merged.T, assignment, conf.T)
    tp = np.diag(merged[:, :G])
    union = merged.sum(1) + merged[:, :G].sum(0) - tp
    return tp / np.maximum(union, 1)


def score_labels(gt_ids: np.ndarray, clusters: np.ndarray, num_clusters: int, matching: str) -> Dict[str, object]:
    """Score one clip.

    Args:
        gt_ids: [T, H, W] object ids (0 = background, VOID = 255 not scored, as in DAVIS).
        clusters: [T, H, W] cluster indices in [0, num_clusters).
        matching: 'hungarian' or 'many_to_one'.
    Returns:
        {"miou": float, "iou": {object id: IoU}, "prediction": [T, H, W] object ids of the matched
        clusters (uint8)}.
    """
    if matching not in MATCHINGS:
        raise ValueError(f"matching {matching!r}: expected one of {MATCHINGS}")
    scored = gt_ids != VOID  # [T, H, W]; void pixels enter no count
    ids = np.unique(gt_ids[scored])  # sorted: background 0 first when present
    labels = np.searchsorted(ids, gt_ids[scored])  # [P] label indices of the scored pixels
    conf = confusion_matrix(labels, clusters[scored], len(ids), num_clusters)  # [G, K]
    background = 0 if ids[0] == 0 else len(ids)
    if matching == "hungarian":
        assignment = hungarian_assignment(conf, background)
    else:
        assignment = many_to_one_assignment(conf)
    iou = matched_iou(conf, assignment)
    ids_out = np.append(ids, 0).astype(np.uint8)  # label index G reads as background
    prediction = ids_out[assignment][clusters]  # [T, H, W]
    prediction[~scored] = VOID
    return {"miou": float(iou.mean()), "iou": {int(i): float(v) for i, v in zip(ids, iou)},
            "prediction": prediction}


def overlay(frames: np.ndarray, ids: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 in grey (so the frame's own colours are not read as labels) with
    objects (ids [T, H, W], 0 left uncoloured) blended in."""
    grey = np.repeat((frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, -1)
    blend = (1 - alpha) * grey + alpha * palette()[ids].astype(np.float32)  # [T, H, W, 3]
    return np.where((ids > 0)[..., None], blend, grey).round().astype(np.uint8)


def write_overlay(path: str, frames: np.ndarray, gt_ids: np.ndarray, predictions: Sequence[np.ndarray],
                  titles: Sequence[str]) -> None:
    """One PNG: a row per frame, columns frame | ground truth | each matched prediction, a title row
    on top. Matched predictions carry the ground-truth ids, so a right object has the GT's colour."""
    from PIL import Image, ImageDraw
    columns = [frames, overlay(frames, gt_ids)] + [overlay(frames, p) for p in predictions]
    grid = np.concatenate([np.concatenate(list(c), axis=0) for c in columns], axis=1)  # [T*H, C*W, 3]
    W = frames.shape[2]
    image = Image.new("RGB", (grid.shape[1], grid.shape[0] + 14), "white")
    image.paste(Image.fromarray(grid), (0, 14))
    draw = ImageDraw.Draw(image)
    for i, title in enumerate(["frame", "ground truth", *titles]):
        draw.text((i * W + 2, 1), title, fill="black")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image.save(path)


def score_clip(name: str, gt_ids: np.ndarray, clusterings: Dict[str, tuple], frames: Optional[np.ndarray],
               overlay_path: Optional[str]) -> Dict[str, object]:
    """The pool job of one clip: {protocol: {"miou", "iou", "num_clusters"}} for every entry of
    `clusterings` ({protocol: (clusters [T, H, W], num_clusters, matching)}), and its overlay PNG
    when `overlay_path` is given (frames [T, H, W, 3] uint8)."""
    scores, predictions, titles = {}, [], []
    for protocol, (clusters, k, matching) in clusterings.items():
        s = score_labels(gt_ids, clusters, k, matching)
        predictions.append(s.pop("prediction"))
        titles.append(f"{protocol} {100 * s['miou']:.0f}")  # mIoU in percent; K is in the JSON
        scores[protocol] = {**s, "num_clusters": int(k)}
    if overlay_path is not None:
        write_overlay(overlay_path, frames, gt_ids, predictions, titles)
    return {"video": name, **scores}
