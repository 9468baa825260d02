"""One fine-tuning epoch, and evaluation over any number of views per video.

    train:  clip ──mixup/cutmix──> model ──> logits ──soft-target CE (label smoothing)──> loss
    eval:   every (video, segment, crop) view ──> softmax (or features) ──all_gather──>
            de-duplicated by key ──> mean over each video's views ──> top-1 / top-5 / per-class
            ──> test_results*.json, predictions*.csv
"""
import csv
import json
import logging
import os
from typing import Callable, Dict, Iterable, Iterator, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from datasets.mixup import Mixup, smooth_one_hot
from distributed import DistEnv
from progress import track
from training_loop import PRECISIONS, StepDone, to_device, train_steps

logger = logging.getLogger("sigma")


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k targets_k log softmax(logits)_k; logits, targets [B, K]."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def train_one_epoch(model: nn.Module, loader: Iterable, update, schedule, *, device: torch.device, epoch: int,
                    start_step: int, num_classes: int, accum_iter: int = 1, mixup: Optional[Mixup] = None,
                    smoothing: float = 0.0, log_every: int = 20, skip_nonfinite: int = 0,
                    tracker=None, task=None, nonfinite=None) -> Iterator[StepDone]:
    """One fine-tuning epoch, yielding after every optimiser step (see `training_loop.train_steps`).

    Args:
        mixup: mixes each batch and gives its soft targets (they carry the label smoothing).
        smoothing: label smoothing without mixup.
        task: an `evals.tasks.Task` whose loss replaces single-head classification (no mixup, smoothing).
        nonfinite: the run's `training_loop.NonFiniteWatch` (it reads the loss this returns).
    """

    def loss_fn(batch):
        if task is not None:  # evals.tasks.Task: multi-label, counting or the attentive-probe grid
            return task.loss(model(batch["video"]), batch)
        videos, labels = batch["video"], batch["label"]  # [B, C, T, H, W], [B]
        if mixup is not None:
            videos, targets = mixup(videos, labels)  # targets [B, K]
        elif smoothing > 0:
            targets = smooth_one_hot(labels, num_classes, smoothing)
        logits = model(videos).float()  # [B, K]
        if mixup is not None or smoothing > 0:
            loss = soft_target_cross_entropy(logits, targets)
        else:
            loss = F.cross_entropy(logits, labels)
        stats = {"loss": loss.detach()}
        if mixup is None:  # accuracy means nothing on mixed clips
            stats["acc1"] = (logits.detach().argmax(-1) == labels).float().mean()
        return loss, stats

    return train_steps(model, loader, update, schedule, loss_fn, device=device, epoch=epoch, start_step=start_step,
                       accum_iter=accum_iter, log_every=log_every, skip_nonfinite=skip_nonfinite, tracker=tracker,
                       nonfinite=nonfinite)


class Views(NamedTuple):
    """One row per evaluated view."""
    index: torch.Tensor  # [M] long, position of the video in the annotation list
    segment: torch.Tensor  # [M] long
    crop: torch.Tensor  # [M] long
    label: torch.Tensor  # [M] long
    output: torch.Tensor  # [M, D] float: class probabilities or features


class Videos(NamedTuple):
    """One row per video, in ascending index order."""
    index: torch.Tensor  # [V] long
    label: torch.Tensor  # [V] long
    output: torch.Tensor  # [V, D] mean over the video's views
    num_views: torch.Tensor  # [V] long


def softmax_outputs(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-view class probabilities: the test protocol averages softmax, not logits."""
    return lambda videos: model(videos).float().softmax(-1)


@torch.no_grad()
def predict_views(output_fn: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, loader: Iterable, *,
                  device: torch.device, precision: str = "fp32", input_dtype: Optional[torch.dtype] = None,
                  tracker=None, desc: str = "evaluation") -> Views:
    """`output_fn(videos)` of every view the loader yields (model in eval mode), kept on `device`;
    progress (`desc`, in batches) on rank 0: a bar on a terminal, else an INFO line every 30 s."""
    model.eval()
    dtype = PRECISIONS[precision] if input_dtype is None else None
    parts = {k: [] for k in Views._fields}
    for batch in track(loader, desc=desc, unit="batches"):
        if tracker is not None:
            tracker.update(batch, collective=False)  # shards may differ by a batch: no collective here
        batch = to_device(batch, device, input_dtype)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            parts["output"].append(output_fn(batch["video"]).float())
        for k in ("index", "segment", "crop", "label"):
            parts[k].append(batch[k])
    if not parts["output"]:
        return Views(*(torch.zeros(0, dtype=torch.long, device=device) for _ in range(4)),
                     torch.zeros(0, 0, device=device))
    return Views(**{k: torch.cat(v) for k, v in parts.items()})


def gather_views(views: Views, env: DistEnv) -> Views:
    """Every rank's views on every rank (all_gather of tensors padded to the longest shard)."""
    if env.world_size == 1 or not dist.is_initialized():
        return views
    count = torch.tensor([views.index.shape[0]], device=env.device)
    counts = [torch.zeros_like(count) for _ in range(env.world_size)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    dim = torch.tensor([views.output.shape[1]], device=env.device)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)  # a rank with no views has output width 0
    longest, D = max(counts), int(dim)
    gathered = []
    for field in views:
        local = field if field.ndim == 1 else field.reshape(-1, D)
        padded = local.new_zeros((longest,) + tuple(local.shape[1:]))
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(env.world_size)]
        dist.all_gather(parts, padded.contiguous())
        gathered.append(torch.cat([p[:n] for p, n in zip(parts, counts)]))
    return Views(*gathered)


def merge_views(views: Views) -> Videos:
    """Average each video's views, after dropping repeated (index, segment, crop) keys (a sampler's
    padding or a replaced unreadable file). Views are summed in key order, so the result does not
    depend on how the views were spread over processes. Runs where the views are (the device: a
    kNN bank stays there)."""
    device = views.index.device
    keys = torch.stack([views.index, views.segment, views.crop], 1)  # [M, 3]
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)  # rows in ascending key order
    first = torch.full((unique.shape[0],), keys.shape[0], dtype=torch.long, device=device)
    first.scatter_reduce_(0, inverse, torch.arange(keys.shape[0], device=device), reduce="amin")  # first row per key
    index = views.index[first]  # ascending
    videos, per_view = torch.unique_consecutive(index, return_inverse=True)
    sums = torch.zeros(videos.shape[0], views.output.shape[1], dtype=torch.float64, device=device)
    sums.index_add_(0, per_view, views.output[first].double())
    num_views = torch.bincount(per_view, minlength=videos.shape[0])
    labels = torch.zeros(videos.shape[0], dtype=torch.long, device=device).scatter_(0, per_view, views.label[first])
    return Videos(videos, labels, (sums / num_views[:, None]).float(), num_views)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean per-class accuracy (%) over the classes present."""
    if labels.numel() == 0:
        raise ValueError("no video was evaluated")
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices  # [V, 5]
    correct = top5 == labels[:, None]
    hit1 = correct[:, 0].float()
    per_class = torch.zeros(probs.shape[1]).index_add_(0, labels, hit1)
    present = torch.bincount(labels, minlength=probs.shape[1])
    return {"acc1": 100.0 * hit1.mean().item(), "acc5": 100.0 * correct.any(1).float().mean().item(),
            "mean_class_acc": 100.0 * (per_class[present > 0] / present[present > 0]).mean().item(),
            "num_videos": int(labels.numel())}


def evaluate(model: nn.Module, loader: Iterable, env: DistEnv, *, sharded: bool, precision: str = "fp32",
             input_dtype: Optional[torch.dtype] = None, tracker=None,
             desc: str = "evaluation") -> Tuple[Dict[str, float], Videos]:
    """Classification metrics over all views of `loader`, merged per video.

    Args:
        sharded: the loader yields this rank's share (gathered here); else every rank saw everything.
        desc: the step's name in progress lines, e.g. "validation (epoch 3)".
    """
    views = predict_views(softmax_outputs(model), model, loader, device=env.device, precision=precision,
                          input_dtype=input_dtype, tracker=tracker, desc=desc)
    videos = merge_views(gather_views(views, env) if sharded else views)
    videos = Videos(*(f.cpu() for f in videos))  # [V, K] probabilities: metrics and the CSV on the host
    return classification_metrics(videos.output, videos.label), videos


def write_test_results(output_dir: str, name: str, metrics: dict, videos, samples, views: str) -> None:
    """test_results*.json (metrics) and predictions*.csv (one row per video) in output_dir."""
    missing = len(samples) - metrics["num_videos"]
    result = {"top1": metrics["acc1"], "top5": metrics["acc5"], "mean_class_acc": metrics["mean_class_acc"],
              "num_videos": metrics["num_videos"], "missing_videos": missing, "views": views}
    with open(os.path.join(output_dir, f"test_results{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    probs = videos.output
    top5 = probs.topk(min(5, probs.shape[1]), dim=1)
    with open(os.path.join(output_dir, f"predictions{name}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "path", "label", "pred", "prob", "top5", "num_views"])
        for row, i in enumerate(videos.index.tolist()):
            w.writerow([i, samples[i].path, int(videos.label[row]), int(top5.indices[row, 0]),
                        f"{float(top5.values[row, 0]):.6f}", " ".join(map(str, top5.indices[row].tolist())),
                        int(videos.num_views[row])])
    logger.info("test%s (%s views): top-1 %.2f top-5 %.2f mean class %.2f over %d videos%s", name, views,
                result["top1"], result["top5"], result["mean_class_acc"], result["num_videos"],
                f"; {missing} unreadable videos missing" if missing else "")
