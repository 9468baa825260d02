"""The frozen-feature score pretraining logs every --eval_every epochs: weighted kNN (eval_knn's
protocol: one centre clip per video, pooled L2-normalised encoder features, k neighbours voting
with exp(cosine / T)) of a held-out labelled list, so collapse shows and checkpoints can be
picked without fine-tuning."""
import logging
import os
import time
from typing import Dict, Optional

import torch

from datasets.annotations import read_annotations
from datasets.sampler import ShardSampler
from datasets.video_dataset import ClipConfig, VideoClipDataset, collate_clips
from distributed import DistEnv
from eval_knn import frozen_features, knn_votes, topk_accuracy
from shutdown import WORKER_INIT

logger = logging.getLogger("sigma")


class KnnMonitor:
    """kNN top-1 / top-5 of `data_path`/val.csv against the bank `data_path`/train.csv.

    Args:
        clip: the clip geometry of the run (val mode: centre clip, short side = crop size).
        nb_classes: labels in [0, nb_classes); None: the largest label of the two lists + 1.
    """

    def __init__(self, data_path: str, *, data_root: str, nb_classes: Optional[int], clip: ClipConfig, k: int,
                 temperature: float, batch_size: int, num_workers: int, video_backend: str, env: DistEnv):
        self.k, self.temperature, self.env = k, temperature, env
        splits = {split: read_annotations(os.path.join(data_path, f"{split}.csv"), data_root or data_path,
                                          nb_classes=nb_classes) for split in ("train", "val")}
        self.nb_classes = nb_classes or 1 + max(s.label for samples in splits.values() for s in samples)
        self.loaders = {}
        for split, samples in splits.items():
            dataset = VideoClipDataset(samples, "val", clip=clip, video_backend=video_backend)
            self.loaders[split] = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), env.world_size, env.rank),
                num_workers=num_workers, collate_fn=collate_clips, pin_memory=env.device.type == "cuda",
                worker_init_fn=WORKER_INIT, generator=torch.Generator())  # leaves torch's global RNG alone

    @torch.no_grad()
    def score(self, encoder: torch.nn.Module, precision: str) -> Dict[str, float]:
        """{"knn_top1", "knn_top5", "knn_time"} of `encoder` (a collective: every rank calls it).
        The encoder is left in eval mode; the next training epoch puts it back in train mode."""
        t0 = time.time()
        bank, bank_labels = frozen_features(encoder, self.loaders["train"], self.env, precision, "kNN monitor (train)")
        queries, labels = frozen_features(encoder, self.loaders["val"], self.env, precision, "kNN monitor (val)")
        votes = knn_votes(bank, bank_labels, queries, self.nb_classes, [self.k], self.temperature)[self.k]
        acc = topk_accuracy(votes, labels)
        record = {"knn_top1": acc["top1"], "knn_top5": acc["top5"], "knn_time": time.time() - t0}
        logger.info("kNN k=%d of %d queries against %d: top-1 %.2f top-5 %.2f (%.1f s)", self.k, queries.shape[0],
                    bank.shape[0], record["knn_top1"], record["knn_top5"], record["knn_time"])
        return record
