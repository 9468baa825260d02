"""What a fine-tuning run trains and measures beyond single-label classification with one head
(engine_for_finetuning.evaluate), for SEVERE's task-shift rows and the attentive probe:

    multilabel   Charades: sigmoid outputs, BCE on multi-hot targets, views merged by max, mAP
    counting     UCFRep repetition counting: one regression output, L1 on the count, views
                 averaged, SEVERE's normalised MAE and off-by-one accuracy
    heads > 1    the attentive-probe grid: outputs [H, B, K], every head trained on its own loss
                 and scored on its own; the best head on the last validation (V-JEPA 2) is the one
                 reported; a head retired in training (diverged) is scored as "diverged", never picked
"""
import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from distributed import DistEnv
from engine_for_finetuning import (Views, Videos, classification_metrics, evaluate, gather_views, merge_views,
                                   predict_views)
from evals.attentive import grid_loss, select_best
from evals.severe_metrics import charades_map, counting_metrics

logger = logging.getLogger("sigma")

TASKS = ("classification", "multilabel", "counting")
TASK_OF_DATA_SET = {"Charades": "multilabel", "UCFRep": "counting"}
# The metric that picks the best head and checkpoint-best.pth, and whether higher is better.
PRIMARY = {"classification": ("acc1", True), "multilabel": ("mAP", True), "counting": ("mae", False)}


@dataclass(frozen=True)
class Task:
    kind: str  # one of TASKS
    heads: int = 1  # > 1: the model returns [H, B, K] (AttentiveProbe)

    @property
    def primary(self) -> str:
        return PRIMARY[self.kind][0]

    def better(self, value: float, than: Optional[float]) -> bool:
        return than is None or (value > than if PRIMARY[self.kind][1] else value < than)

    def _head_loss(self, logits: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        logits = logits.float()  # [B, K]
        if self.kind == "classification":
            return F.cross_entropy(logits, batch["label"])
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, batch["target"])  # target [B, K] multi-hot
        return F.l1_loss(logits[:, 0], batch["target"])  # target [B] counts

    def loss(self, outputs: torch.Tensor, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(loss to backpropagate, stats) of outputs [B, K] or, with heads > 1, [H, B, K]: the sum
        of the live heads' losses (each head gets exactly its own gradient); "loss" logs their mean."""
        if self.heads == 1:
            loss = self._head_loss(outputs, batch)
            return loss, {"loss": loss.detach()}
        total, per_head = grid_loss(outputs, batch, self._head_loss)
        live = torch.isfinite(per_head)  # retired (NaN) and diverging heads are not averaged
        mean = torch.where(live, per_head, 0.0).sum() / live.sum()  # NaN when no head is live
        return total, {"loss": mean, "loss_best_head": torch.where(live, per_head, math.inf).min()}

    def view_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """What a test view contributes: class probabilities, label probabilities or the count;
        [B, K] or [H, B, K] -> [B, H*K]."""
        outputs = outputs.float()
        if self.kind == "classification":
            outputs = outputs.softmax(-1)
        elif self.kind == "multilabel":
            outputs = outputs.sigmoid()
        return outputs.transpose(0, 1).flatten(1) if self.heads > 1 else outputs

    def merge(self, views: Views) -> Videos:
        """One row per video: views averaged; Charades' views by max, as SEVERE."""
        if self.kind != "multilabel":
            return merge_views(views)
        mean = merge_views(views)  # the de-duplicated videos, their labels and view counts
        keys = torch.stack([views.index, views.segment, views.crop], 1)  # [M, 3]
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
        first = torch.full((unique.shape[0],), keys.shape[0], dtype=torch.long, device=keys.device)
        first.scatter_reduce_(0, inverse, torch.arange(keys.shape[0], device=keys.device), reduce="amin")
        row = torch.searchsorted(mean.index, views.index[first])  # [U] row of each kept view
        out = torch.full_like(mean.output, float("-inf"))
        out.scatter_reduce_(0, row[:, None].expand(-1, out.shape[1]), views.output[first], reduce="amax")
        return Videos(mean.index, mean.label, out, mean.num_views)

    def metrics(self, videos: Videos, targets: Optional[torch.Tensor],
                dead: Sequence[int] = ()) -> List[Dict[str, float]]:
        """Per head: top-1 / top-5 / mean class accuracy, mAP, or counting errors.

        Args:
            targets: [N, K] multi-hot (multilabel) or [N] counts (counting), indexed by video.
            dead: heads retired in training; they, and any head with a non-finite output, get
                {"diverged": True, primary metric NaN} instead of scores.
        """
        V = videos.output.shape[0]
        outputs = videos.output.reshape(V, self.heads, -1)  # [V, H, K]
        finite = torch.isfinite(outputs).flatten(2).all(2).all(0).tolist()  # [H]
        out = []
        for h in range(self.heads):
            if h in dead or not finite[h]:
                out.append({"diverged": True, self.primary: math.nan, "num_videos": int(V)})
                continue
            if self.kind == "classification":
                m = classification_metrics(outputs[:, h], videos.label)
            elif self.kind == "multilabel":
                m = charades_map(outputs[:, h], targets[videos.index])
                m = {"mAP": m["mAP"], "num_classes_scored": m["num_classes_scored"]}
            else:
                m = counting_metrics(outputs[:, h, 0], targets[videos.index])
                m = {k: v for k, v in m.items() if not isinstance(v, (list, torch.Tensor))}
            out.append({**m, "num_videos": int(V)})
        return out


def evaluate_task(model: torch.nn.Module, loader: Iterable, env: DistEnv, task: Task,
                  targets: Optional[torch.Tensor], *, sharded: bool, precision: str = "fp32",
                  input_dtype: Optional[torch.dtype] = None, tracker=None,
                  desc: str = "evaluation", dead: Sequence[int] = ()) -> Tuple[List[Dict[str, float]], Videos]:
    """Every head's metrics over all views of `loader`, merged per video (see `Task.merge`);
    `dead`: heads retired in training (scored as diverged)."""
    views = predict_views(lambda v: task.view_outputs(model(v)), model, loader, device=env.device,
                          precision=precision, input_dtype=input_dtype, tracker=tracker, desc=desc)
    videos = task.merge(gather_views(views, env) if sharded else views)
    videos = Videos(*(f.cpu() for f in videos))
    if videos.index.numel() == 0:
        raise ValueError("no video was evaluated")
    return task.metrics(videos, targets, dead), videos


def best_head(task: Task, per_head: Sequence[Dict[str, float]], head: Optional[int] = None) -> Dict[str, float]:
    """The reported metrics: of `head` (chosen on validation), else of the best head here."""
    if head is None:
        head, _ = select_best(per_head, key=task.primary, higher_is_better=PRIMARY[task.kind][1])
    return {**per_head[head], "head": head}


def describe(task: Task, m: Dict[str, float]) -> str:
    """The metrics of one head as the test line prints them."""
    if task.kind == "classification":
        return f"top-1 {m['acc1']:.2f} top-5 {m['acc5']:.2f} mean class {m['mean_class_acc']:.2f}"
    if task.kind == "multilabel":
        return f"mAP {m['mAP']:.2f} over {m['num_classes_scored']} classes"
    return (f"MAE {m['mae']:.4f} (std {m['mae_std']:.4f}) OBO {m['obo']:.4f} MAEP {m['mae_over']:.4f} "
            f"MAEN {m['mae_under']:.4f}")


def write_task_results(output_dir: str, name: str, task: Task, metrics: Dict[str, float],
                       per_head: Sequence[Dict[str, float]], videos: Videos, samples, targets, views: str,
                       chosen_on: str = "test") -> None:
    """test_results*.json (the reported head's metrics, every head's), predictions*.csv (one row per
    video, the reported head's prediction; with several heads also every head's) and the test line.

    Args:
        chosen_on: where the reported head was picked, for the log line ("the final epoch's validation").
    """
    result = {"task": task.kind, **metrics, "views": views, "missing_videos": len(samples) - metrics["num_videos"]}
    if task.heads > 1:
        result["per_head"] = list(per_head)
        result["head_chosen_on"] = chosen_on
    with open(os.path.join(output_dir, f"test_results{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    V = len(videos.index)
    outputs = videos.output.reshape(V, task.heads, -1)  # [V, H, K]
    reported = outputs[:, metrics.get("head", 0)]  # [V, K]
    every = task.heads > 1
    with open(os.path.join(output_dir, f"predictions{name}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        if task.kind == "counting":  # the raw regression output and the count SEVERE scores (rounded)
            w.writerow(["index", "path", "count", "predicted", "rounded", "num_views"]
                       + [f"predicted_head{h}" for h in range(task.heads) if every])
            for row, i in enumerate(videos.index.tolist()):
                p = float(reported[row, 0])
                w.writerow([i, samples[i].path, f"{float(targets[i]):g}", f"{p:.4f}",
                            int(round(p)) if math.isfinite(p) else "", int(videos.num_views[row])]
                           + ([f"{float(v):.4f}" for v in outputs[row, :, 0]] if every else []))
        elif task.kind == "multilabel":  # the five most likely classes and the video's true classes
            top5 = reported.topk(min(5, reported.shape[1]), dim=1)
            w.writerow(["index", "path", "labels", "top5", "top5_prob", "num_views"])
            for row, i in enumerate(videos.index.tolist()):
                truth = " ".join(map(str, targets[i].nonzero().flatten().tolist()))
                w.writerow([i, samples[i].path, truth, " ".join(map(str, top5.indices[row].tolist())),
                            " ".join(f"{v:.4f}" for v in top5.values[row].tolist()), int(videos.num_views[row])])
        else:  # as engine_for_finetuning.write_test_results, plus each head's top-1 class
            top5 = reported.topk(min(5, reported.shape[1]), dim=1)
            w.writerow(["index", "path", "label", "pred", "prob", "top5", "num_views"]
                       + [f"pred_head{h}" for h in range(task.heads) if every])
            for row, i in enumerate(videos.index.tolist()):
                w.writerow([i, samples[i].path, int(videos.label[row]), int(top5.indices[row, 0]),
                            f"{float(top5.values[row, 0]):.6f}", " ".join(map(str, top5.indices[row].tolist())),
                            int(videos.num_views[row])]
                           + ([int(c) if not per_head[h].get("diverged") else "" for h, c in
                               enumerate(outputs[row].argmax(-1).tolist())] if every else []))
    missing = result["missing_videos"]
    diverged = [h for h, m in enumerate(per_head) if m.get("diverged")]
    head = (f", head {metrics['head']} of {task.heads} chosen on {chosen_on}"
            + (f", {len(diverged)} diverged {diverged}" if diverged else "")) if every else ""
    logger.info("test%s (%s views%s): %s over %d videos%s", name, views, head, describe(task, metrics),
                metrics["num_videos"], f"; {missing} unreadable videos missing" if missing else "")


def validate(nets, val, env, *, sharded: bool, precision: str, task, targets, dead: Sequence[int] = ()) -> dict:
    """val_* (and val_ema_*) metrics of every net on the validation loader; with several heads
    those of the best one ("val_head") and every head's primary metric ("val_head{h}_...", NaN for
    a diverged head; `dead`: the heads retired in training)."""
    record = {}
    for name, net, dtype in nets:
        if task is None:
            metrics, _ = evaluate(net, val, env, sharded=sharded, precision=precision, input_dtype=dtype,
                                  desc=f"validation{name}")
        else:
            per_head, _ = evaluate_task(net, val, env, task, targets, sharded=sharded, precision=precision,
                                        input_dtype=dtype, desc=f"validation{name}", dead=dead)
            metrics = best_head(task, per_head) if task.heads > 1 else per_head[0]
            if task.heads > 1:
                metrics.update({f"head{h}_{task.primary}": m[task.primary] for h, m in enumerate(per_head)})
        record.update({f"val{name}_{k}": v for k, v in metrics.items()})
    return record
