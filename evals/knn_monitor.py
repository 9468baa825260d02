"""The frozen-feature score pretraining logs every --eval_every epochs: weighted kNN (evals.knn's
protocol: one centre clip per video, pooled L2-normalised encoder features, k neighbours voting
with exp(cosine / T)) of a held-out labelled list, so collapse shows and checkpoints can be
picked without fine-tuning.

The monitor never costs a checkpoint: its lists are read and probed when the run starts (a list
whose probed videos all fail to open stops the run before training), the driver runs it after the
epoch's checkpoint, and a failure while scoring is agreed on by every rank and then skipped with a
warning (training goes on)."""
import logging
import os
import time
from typing import Dict, Optional

import torch

from datasets.annotations import read_annotations
from datasets.decoding import VideoError, open_video
from datasets.video_dataset import ClipConfig, VideoClipDataset
from distributed import DistEnv, broadcast_object, ranks_with
from evals.common import (MAX_BAD_FRACTION, LeftOut, account_scored, eval_loader, knn_votes, local_features,
                          merged_features, topk_accuracy, used_k)
from shutdown import describe

PROBED = 32  # videos per list opened at start (spread over the list): a cheap check of the whole list

logger = logging.getLogger("sigma")


class KnnMonitor:
    """kNN top-1 / top-5 of `data_path`/val.csv against the bank `data_path`/train.csv.

    Args:
        clip: the clip geometry of the run (val mode: centre clip, short side = crop size).
        nb_classes: labels in [0, nb_classes); None: the largest label of the two lists + 1.
        max_bad_fraction: the share of a list that may be unreadable; above it `score` skips the epoch's
            score with a warning naming the files (below it, they are named and counted in the record).
    """

    def __init__(self, data_path: str, *, data_root: str, nb_classes: Optional[int], clip: ClipConfig, k: int,
                 temperature: float, batch_size: int, num_workers: int, video_backend: str, env: DistEnv,
                 max_bad_fraction: float = MAX_BAD_FRACTION):
        self.k, self.temperature, self.env, self.max_bad_fraction = k, temperature, env, max_bad_fraction
        self.names = {}
        splits = {split: read_annotations(os.path.join(data_path, f"{split}.csv"), data_root or data_path,
                                          nb_classes=nb_classes) for split in ("train", "val")}
        self.nb_classes = nb_classes or 1 + max(s.label for samples in splits.values() for s in samples)
        problem = _probe(data_path, splits, video_backend) if env.is_main else None
        problem = broadcast_object(problem)
        if problem:
            raise SystemExit(problem)
        self.loaders = {}
        for split, samples in splits.items():
            self.names[split] = [s.path for s in samples]
            dataset = VideoClipDataset(samples, "val", clip=clip, video_backend=video_backend)
            self.loaders[split] = eval_loader(dataset, batch_size=batch_size, num_workers=num_workers, env=env,
                                              generator=torch.Generator())  # leaves torch's global RNG alone

    @torch.no_grad()
    def score(self, encoder: torch.nn.Module, precision: str) -> Optional[Dict[str, float]]:
        """{"knn_top1", "knn_top5", "knn_time", "knn_queries", "knn_bank"} of `encoder` (a collective:
        every rank calls it), or None when it failed on any rank (logged; the run goes on).
        The encoder is left in eval mode; the next training epoch puts it back in train mode."""
        t0 = time.time()
        views, reasons, error = {}, {}, None
        try:  # this rank's own share: the decoding, where a monitor fails, involves no collective
            for split, loader in self.loaders.items():
                left_out = LeftOut()
                views[split] = local_features(encoder, loader, self.env.device, precision, left_out,
                                              desc=f"kNN monitor ({split})")
                reasons[split] = left_out.reasons
        except Exception as e:  # noqa: BLE001 - a monitor must never be why a run cannot advance
            error = describe(e)
        failed = ranks_with(error is not None)  # every rank skips together, or none does
        if failed:
            logger.warning("kNN monitor failed on rank(s) %s and was skipped (training goes on)%s", failed,
                           f": {error}" if error else "")
            return None
        merged = {split: merged_features(v, self.env) for split, v in views.items()}  # collectives, every rank
        try:  # every rank checks the same gathered indices, so every rank decides alike
            for split, (_, _, index) in merged.items():
                account_scored(self.names[split], index.cpu(), f"kNN monitor {split}.csv", self.max_bad_fraction,
                               reasons[split])
        except RuntimeError as e:
            logger.warning("kNN monitor skipped this epoch (training goes on): %s", e)
            return None
        (bank, bank_labels, _), (queries, labels, _) = merged["train"], merged["val"]
        k = used_k(self.k, bank.shape[0])
        votes = knn_votes(bank, bank_labels, queries, self.nb_classes, [k], self.temperature)[k]
        acc = topk_accuracy(votes, labels)
        record = {"knn_top1": acc["top1"], "knn_top5": acc["top5"], "knn_time": time.time() - t0, "knn_k": k,
                  "knn_queries": int(queries.shape[0]), "knn_bank": int(bank.shape[0])}
        logger.info("kNN k=%d of %d of %d queries against %d of %d: top-1 %.2f top-5 %.2f (%.1f s)", k,
                    queries.shape[0], len(self.names["val"]), bank.shape[0], len(self.names["train"]),
                    record["knn_top1"], record["knn_top5"], record["knn_time"])
        return record


def _probe(data_path: str, splits: Dict[str, list], backend: str) -> Optional[str]:
    """Open the headers of up to PROBED videos of each list: a message when none of a list's opens
    (the run would otherwise train an epoch and fail at the monitor), None otherwise."""
    for split, samples in splits.items():
        picked = samples[::max(1, len(samples) // PROBED)][:PROBED]
        bad = []
        for sample in picked:
            try:
                open_video(sample.path, backend)
            except VideoError as e:
                bad.append(f"{sample.path} ({e.reason})")
            except Exception as e:  # noqa: BLE001 - a decoder's own error: unreadable all the same
                bad.append(f"{sample.path} ({describe(e)})")
        if picked and len(bad) == len(picked):
            return (f"--eval_data_path {os.path.join(data_path, split + '.csv')}: none of the {len(picked)} videos "
                    f"probed opens, e.g. {'; '.join(bad[:3])}; fix the list or run without --eval_every")
        if bad:
            logger.warning("--eval_data_path %s: %d of %d probed videos do not open, e.g. %s (the kNN monitor "
                           "leaves them out)", os.path.join(data_path, split + ".csv"), len(bad), len(picked), bad[0])
    return None
