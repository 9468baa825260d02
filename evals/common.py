"""The setup every frozen-feature evaluation shares: the flags, the encoder, the splits, the feature
extraction and the accounting of the videos that could not be read, plus the weighted kNN vote
(evals.knn, the kNN beside evals.probe, and the pretraining monitor evals.knn_monitor).

Features are one deterministic centre clip per video, the encoder in eval mode, its tokens pooled
and L2-normalised; each process extracts its share (ShardSampler) and the shares are gathered, so
every rank ends with the features of the whole list.
"""
import argparse
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from datasets import splits
from datasets.decoding import DecodeOptions
from datasets.images import ImageClipDataset
from datasets.sampler import ShardSampler
from datasets.video_dataset import ClipConfig, VideoClipDataset, collate_clips
from engine_for_finetuning import Views, gather_views, merge_views, predict_views
from flags import Rules, add_clip_flags, add_encoder_flags, add_loader_flags, clip_rules
from modeling_finetune import MODELS
from shutdown import WORKER_INIT
from weights import load_pretrained_weights, pooling_for_frozen_features

logger = logging.getLogger("sigma")

# Video data sets and the image benchmarks (their frame sampling is "repeat": one image, T copies).
EVAL_DATA_SETS = splits.DATA_SETS  # video data sets and image benchmarks

# Evaluations score every listed video or say so: above this share left out (unreadable) they fail.
MAX_BAD_FRACTION = 0.01


# ------------------------------------------------------------------------------------------------------------ flags

def add_frozen_encoder_group(p: argparse.ArgumentParser) -> None:
    """The "model" group of the evaluation drivers: the encoder, its checkpoint, or --random_init."""
    g = p.add_argument_group("model")
    add_encoder_flags(g, MODELS, default="vit_base_patch16_224",
                      finetune_help="checkpoint whose encoder is evaluated (ours, SIGMA, VideoMAE, a transformers "
                                    "folder) (default: none: give it or --random_init)")
    g.add_argument("--random_init", action="store_true", help="evaluate a randomly initialised encoder (baseline)")


def add_scoring_flags(group) -> None:
    """--max_bad_fraction of the evaluation drivers (training's default, 0.2, is far looser)."""
    group.add_argument("--max_bad_fraction", type=float, default=MAX_BAD_FRACTION,
                       help="largest share of a list's videos that may be left out (unreadable) before the "
                            "evaluation fails; those left out are always counted and named")


def add_image_flags(group) -> None:
    """--class_list of the image benchmarks (ImageNet's class order)."""
    group.add_argument("--class_list", default="",
                       help="ImageNet: file whose lines start with the class folder names, in label order "
                            "(e.g. LOC_synset_mapping.txt; default: sorted folders of train/)")


def add_clip_input_flags(group) -> None:
    """What the clip-feature drivers (kNN, probe) read after their data set flags: the image class
    list, the clip geometry, the loader and --max_bad_fraction."""
    add_image_flags(group)
    add_clip_flags(group)
    add_loader_flags(group, num_workers=8, batch_size=32, training=False)
    add_scoring_flags(group)


def clip_input_rules(args: argparse.Namespace) -> Rules:
    """check_flags rules of the flags add_clip_input_flags declares."""
    return {"batch_size": (lambda v: v >= 1, ">= 1"), "num_workers": (lambda v: v >= 0, ">= 0"),
            "max_bad_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"), **clip_rules(args)}


def require_one_encoder(args: argparse.Namespace) -> None:
    """Exactly one of --finetune and --random_init, else SystemExit."""
    if bool(args.finetune) == args.random_init:
        raise SystemExit("give exactly one of --finetune CHECKPOINT and --random_init")


# ------------------------------------------------------------------------------------------------- encoder, splits

def load_encoder(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The frozen encoder of --finetune (through its own trained final norm), or a random one (the
    same on every rank for a seed: the caller seeds torch)."""
    mean_pooling = pooling_for_frozen_features(args.finetune, args.model_key) if args.finetune else True
    model = MODELS[args.model](img_size=args.input_size, all_frames=args.num_frames, num_classes=0,
                               use_mean_pooling=mean_pooling).to(device)
    if args.finetune:
        load_pretrained_weights(model, args.finetune, args.model_key, args.model_prefix)
    return model


def read_split(args: argparse.Namespace, data_path: str, split: str,
               nb_classes: Optional[int]) -> Tuple[object, List[int]]:
    """(data, labels) of one split ("train", "val" or "test"): the annotation samples, or for an
    image benchmark its image source (datasets.splits.read_split; labels checked < nb_classes)."""
    found = splits.read_split(args.data_set, data_path, split, data_root=args.data_root, nb_classes=nb_classes,
                              class_list=args.class_list or None)
    return (found.samples if found.images is None else found.images), [s.label for s in found.samples]


def eval_dataset(data, args, mode: str, sampling: str, views: Tuple[int, int] = (1, 1)):
    """The dataset of one split in `mode` ("val" or "test", views = (segments, crops)): clips of
    annotated videos, or of repeated images when the data set's frame sampling is "repeat"."""
    clip = ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate,
                      sampling="dense" if sampling == "repeat" else sampling, input_size=args.input_size,
                      short_side_size=args.short_side_size)
    if sampling == "repeat":
        return ImageClipDataset(data, mode, clip=clip, test_num_crop=views[1], seed=args.seed)
    return VideoClipDataset(data, mode, clip=clip, test_num_segment=views[0], test_num_crop=views[1],
                            video_backend=args.video_backend, seed=args.seed,
                            decode=DecodeOptions(short_side=args.decode_short_side))


def eval_loader(dataset, *, batch_size: int, num_workers: int, env,
                generator: Optional[torch.Generator] = None) -> torch.utils.data.DataLoader:
    """This rank's share of `dataset` (ShardSampler), in batches of `batch_size` items; `generator`
    seeds the workers (None: torch's global RNG draws the seed)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), env.world_size, env.rank),
        num_workers=num_workers, collate_fn=collate_clips, pin_memory=env.device.type == "cuda",
        worker_init_fn=WORKER_INIT, generator=generator)


# -------------------------------------------------------------------------------- accounting of unreadable videos

class LeftOut:
    """The reasons the dataset gave for the files it could not read (its `bad` reports), as
    `predict_views` passes the batches (the `tracker` interface); one per file."""

    def __init__(self) -> None:
        self.reasons: Dict[str, str] = {}

    def update(self, batch: Dict[str, object], collective: bool = False) -> None:
        for path, reason in batch.get("bad", []):
            self.reasons.setdefault(path, reason)


def account_scored(names: Sequence[str], scored: torch.Tensor, what: str, max_bad_fraction: float,
                   reasons: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """Check that the videos `scored` (indices into `names`) cover the list: log how many were scored,
    name the others with the reader's reason, and raise RuntimeError when more than `max_bad_fraction`
    of the list is missing. Returns {"listed", "scored", "left_out"} for the results file."""
    listed, seen = len(names), set(scored.tolist())
    missing = [i for i in range(listed) if i not in seen]
    if not missing:
        logger.info("%s: scored all %d listed videos", what, listed)
        return {"listed": listed, "scored": listed, "left_out": []}
    reasons = reasons or {}
    named = [f"{names[i]} ({reasons.get(names[i], 'unreadable')})" for i in missing]
    shown = "; ".join(named[:10]) + (f"; and {len(named) - 10} more" if len(named) > 10 else "")
    text = f"{what}: scored {listed - len(missing)} of {listed} listed videos, left out {len(missing)}: {shown}"
    if len(missing) > max_bad_fraction * listed:
        raise RuntimeError(f"{text}; more than --max_bad_fraction {max_bad_fraction}: the score would not be "
                           "the list's (fix or drop the files)")
    logger.warning("%s", text)
    return {"listed": listed, "scored": listed - len(missing), "left_out": [names[i] for i in missing]}


def item_names(data) -> List[str]:
    """A name per listed item: the file path of a video / image sample, else `item N`."""
    items = getattr(data, "samples", data)
    return [getattr(s, "path", f"item {i}") for i, s in enumerate(items)] if isinstance(items, list) \
        else [f"item {i}" for i in range(len(data))]


# ---------------------------------------------------------------------------------------------- feature extraction

def local_features(model, loader, device: torch.device, precision: str, left_out: Optional[LeftOut] = None,
                   desc: str = "features") -> Views:
    """Pooled L2-normalised features of every view `loader` yields (this rank's shard only, no
    collective), with their labels and video indices; progress lines name the step `desc`."""
    return predict_views(lambda v: F.normalize(model.forward_features(v).float(), dim=-1), model, loader,
                         device=device, precision=precision, tracker=left_out, desc=desc)


def merged_features(views: Views, env) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L2-normalised features [V, D], labels [V], video indices [V]) of every rank's `views`,
    gathered and averaged per video (a collective: every rank calls it)."""
    videos = merge_views(gather_views(views, env))
    return F.normalize(videos.output, dim=-1), videos.label, videos.index


def frozen_features(model, loader, env, precision: str, left_out: Optional[LeftOut] = None,
                    desc: str = "features"):
    """(pooled L2-normalised features [V, D], labels [V], video indices [V]) of every video `loader`
    yields (this rank's shard), gathered from every rank and merged per video (a collective); the
    reasons for unreadable files go to `left_out`; `desc` names the step in the progress lines."""
    return merged_features(local_features(model, loader, env.device, precision, left_out, desc), env)


def scored_features(model, samples: Sequence, args, env, sampling: str, precision: str, *, what: str = "videos",
                    max_bad_fraction: float = MAX_BAD_FRACTION, desc: str = "features"):
    """(pooled L2-normalised features [V, D], labels [V], indices into `samples` [V]) of every video (or
    image) that could be read, one centre clip each; the others are counted and named (account_scored)."""
    loader = eval_loader(eval_dataset(samples, args, "val", sampling), batch_size=args.batch_size,
                         num_workers=args.num_workers, env=env)
    left_out = LeftOut()
    feats, labels, index = frozen_features(model, loader, env, precision, left_out, desc=desc)
    account_scored(item_names(samples), index.cpu(), what, max_bad_fraction, left_out.reasons)
    return feats, labels, index


def features(model, samples: Sequence, args, env, sampling: str, precision: str, *, what: str = "videos",
             max_bad_fraction: float = MAX_BAD_FRACTION, desc: str = "features"):
    """(pooled L2-normalised features [V, D], labels [V]) of the videos `scored_features` could read."""
    feats, labels, _ = scored_features(model, samples, args, env, sampling, precision, what=what,
                                       max_bad_fraction=max_bad_fraction, desc=desc)
    return feats, labels


# ------------------------------------------------------------------------------------------------------ kNN votes

def used_k(k: int, bank_size: int) -> int:
    """The k a kNN actually uses (at most the bank); a smaller one is said once."""
    if k > bank_size:
        logger.warning("k=%d asked, but the bank holds %d videos: k=%d used", k, bank_size, bank_size)
    return min(k, bank_size)


def knn_classify(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int, k: int,
                 temperature: float, chunk: int = 1024) -> torch.Tensor:
    """Class votes [M, num_classes] of the queries.

    Args:
        bank: [N, D] L2-normalised features; bank_labels [N].
        queries: [M, D] L2-normalised features.
        k: neighbours per query (capped at N).
    """
    return knn_votes(bank, bank_labels, queries, num_classes, [k], temperature, chunk)[k]


def knn_votes(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
              ks: Sequence[int], temperature: float, chunk: int = 1024) -> Dict[int, torch.Tensor]:
    """{k: class votes [M, num_classes]} for every k, from one similarity pass (on the tensors'
    device): the neighbours of the largest k, sorted, hold those of every smaller one."""
    largest = min(max(ks), bank.shape[0])
    votes = {k: [] for k in ks}
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start:start + chunk] @ bank.T  # [m, N] cosines
        top_sim, top_idx = sim.topk(largest, dim=1)  # [m, k_max], descending
        weights, labels = (top_sim / temperature).exp(), bank_labels[top_idx]  # [m, k_max]
        for k in ks:
            k_ = min(k, largest)
            v = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
            votes[k].append(v.scatter_add_(1, labels[:, :k_], weights[:, :k_]))
    return {k: torch.cat(v) for k, v in votes.items()}


def topk_accuracy(votes: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """{"top1", "top5"} in percent of class votes [M, C] against labels [M] (top-5 capped at C)."""
    top = votes.topk(min(5, votes.shape[1]), dim=1).indices == labels[:, None]
    return {"top1": 100.0 * top[:, 0].float().mean().item(), "top5": 100.0 * top.any(1).float().mean().item()}
