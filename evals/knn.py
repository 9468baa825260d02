"""Weighted k-nearest-neighbour classification of frozen encoder features (DINO's kNN protocol).

The train split's features are the bank and the val split's are the queries: one deterministic
centre clip per video, encoder in eval mode, tokens pooled and L2-normalised. Each query's k most
similar bank videos vote for their labels with weight exp(cosine / temperature).

--official_protocol is the official SIGMA eval_knn.py (QUVA-Lab/SIGMA, commit
13e9c1720be401f99e0512c77db10f2fb7c1ea89) instead: k 200, every test view (--test_num_segment x
--test_num_crop of test.csv, else val.csv) is both a bank entry and a query (so each query finds
itself), and the features are the outputs of the randomly initialised classification head
(nb_classes wide, after mean pooling and a fresh fc_norm), L2-normalised.

    python eval_knn.py --model vit_small_patch16_224 --finetune output/demo/checkpoint-latest.pth \\
        --data_set custom --nb_classes 4 --data_path data/demo --input_size 112 --num_frames 8 \\
        --output_dir output/demo_knn

--data_set ImageNet / CIFAR-100 evaluate on images, each read as a clip of --num_frames copies
(datasets/images.py says why): train split = bank, val split (CIFAR-100: test batch) = queries;
with --official_protocol the val images' --test_num_crop crops (one segment). --short_side_size
256 with --input_size 224 is the usual image centre crop.

Features are extracted on every process's share (torchrun / Slurm like the other scripts) and
gathered; results go to output_dir/knn_results.json.
"""
import argparse
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from datasets import splits
from datasets.decoding import DecodeOptions
from datasets.images import ImageClipDataset
from datasets.sampler import ShardSampler
from datasets.video_dataset import ClipConfig, VideoClipDataset, collate_clips
from distributed import broadcast_object, cleanup_distributed
from engine_for_finetuning import gather_views, merge_views, predict_views
from flags import (ArgumentParser, add_clip_flags, add_encoder_flags, add_labelled_data_flags, add_loader_flags,
                   add_run_flags, check_flags, check_nb_classes, clip_rules, nb_classes_of, resolve_precision)
from modeling_finetune import MODELS, load_pretrained_weights, pooling_for_frozen_features
from run_log import write_config
from runtime import start_run
from shutdown import WORKER_INIT, run_driver

logger = logging.getLogger("sigma")

# Video data sets and the image benchmarks (their frame sampling is "repeat": one image, T copies).
EVAL_DATA_SETS = splits.DATA_SETS  # video data sets and image benchmarks
DATA_PATH_HELP = ("folder with train.csv (bank) and val.csv (queries); ImageNet: the folder with train/<wnid>/ and "
                  "val/<wnid>/; CIFAR-100: the folder with cifar-100-python/ (val = its test batch)")


# Evaluations score every listed video or say so: above this share left out (unreadable) they fail.
MAX_BAD_FRACTION = 0.01


def add_scoring_flags(group) -> None:
    """--max_bad_fraction of the evaluation drivers (training's default, 0.2, is far looser)."""
    group.add_argument("--max_bad_fraction", type=float, default=MAX_BAD_FRACTION,
                       help="largest share of a list's videos that may be left out (unreadable) before the "
                            "evaluation fails; those left out are always counted and named")


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


def used_k(k: int, bank_size: int) -> int:
    """The k a kNN actually uses (at most the bank); a smaller one is said once."""
    if k > bank_size:
        logger.warning("k=%d asked, but the bank holds %d videos: k=%d used", k, bank_size, bank_size)
    return min(k, bank_size)


def add_image_flags(group) -> None:
    group.add_argument("--class_list", default="",
                       help="ImageNet: file whose lines start with the class folder names, in label order "
                            "(e.g. LOC_synset_mapping.txt; default: sorted folders of train/)")


def get_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser("eval_knn.py", "kNN evaluation of frozen features")
    g = p.add_argument_group("model")
    add_encoder_flags(g, MODELS, default="vit_base_patch16_224",
                      finetune_help="checkpoint whose encoder is evaluated (ours, SIGMA, VideoMAE, a transformers "
                                    "folder) (default: none: give it or --random_init)")
    g.add_argument("--random_init", action="store_true", help="evaluate a randomly initialised encoder (baseline)")
    g = p.add_argument_group("data")
    add_labelled_data_flags(g, EVAL_DATA_SETS, default="Kinetics-400", data_path_help=DATA_PATH_HELP)
    add_image_flags(g)
    add_clip_flags(g)
    add_loader_flags(g, num_workers=8, batch_size=32, training=False)
    add_scoring_flags(g)
    g = p.add_argument_group("kNN")
    g.add_argument("--k", type=int, nargs="+", default=None,
                   help="neighbours, several values allowed (default: 20; 200 with --official_protocol)")
    g.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature")
    g.add_argument("--official_protocol", action="store_true",
                   help="the official SIGMA kNN: k 200, test-set views as bank and queries, head outputs")
    g.add_argument("--test_num_segment", type=int, default=2, help="views per video with --official_protocol")
    g.add_argument("--test_num_crop", type=int, default=3, help="crops per view with --official_protocol")
    add_run_flags(p, output_dir="output/knn", precision=True)
    args = p.parse_args(argv)
    check_flags(p, args, {"k": (lambda v: min(v) >= 1, "one or more integers >= 1"),
                          "temperature": (lambda v: v > 0, "> 0"), "batch_size": (lambda v: v >= 1, ">= 1"),
                          "num_workers": (lambda v: v >= 0, ">= 0"),
                          "max_bad_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"), **clip_rules(args)})
    check_nb_classes(p, args, EVAL_DATA_SETS)
    return args


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
    top = votes.topk(min(5, votes.shape[1]), dim=1).indices == labels[:, None]
    return {"top1": 100.0 * top[:, 0].float().mean().item(), "top5": 100.0 * top.any(1).float().mean().item()}


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


def frozen_features(model, loader, env, precision: str, left_out: Optional[LeftOut] = None,
                    desc: str = "features"):
    """(pooled L2-normalised features [V, D], labels [V], video indices [V]) of every video `loader`
    yields (this rank's shard), gathered from every rank and merged per video (a collective); the
    reasons for unreadable files go to `left_out`; `desc` names the step in the progress lines."""
    views = predict_views(lambda v: F.normalize(model.forward_features(v).float(), dim=-1), model, loader,
                          device=env.device, precision=precision, tracker=left_out, desc=desc)
    videos = merge_views(gather_views(views, env))
    return F.normalize(videos.output, dim=-1), videos.label, videos.index


def scored_features(model, samples: Sequence, args, env, sampling: str, precision: str, *, what: str = "videos",
                    max_bad_fraction: float = MAX_BAD_FRACTION, desc: str = "features"):
    """(pooled L2-normalised features [V, D], labels [V], indices into `samples` [V]) of every video (or
    image) that could be read, one centre clip each; the others are counted and named (account_scored)."""
    dataset = eval_dataset(samples, args, "val", sampling)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=ShardSampler(len(dataset), env.world_size, env.rank),
        num_workers=args.num_workers, collate_fn=collate_clips, pin_memory=env.device.type == "cuda",
        worker_init_fn=WORKER_INIT)
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


def official_features(model, samples: Sequence, args, env, sampling: str, precision: str):
    """(L2-normalised head outputs [M, nb_classes], labels [M]) of every test view of every video
    (of every image: one segment, test_num_crop crops)."""
    segments = 1 if sampling == "repeat" else args.test_num_segment
    dataset = eval_dataset(samples, args, "test", sampling, views=(segments, args.test_num_crop))
    items = max(1, args.batch_size // args.test_num_crop)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=items, sampler=ShardSampler(len(dataset), env.world_size, env.rank),
        num_workers=args.num_workers, collate_fn=collate_clips, pin_memory=env.device.type == "cuda",
        worker_init_fn=WORKER_INIT)
    left_out = LeftOut()
    views = predict_views(lambda v: model(v).float(), model, loader, device=env.device, precision=precision,
                          tracker=left_out, desc="test-view features")
    views = gather_views(views, env)  # on the device: the kNN runs there
    account_scored(item_names(samples), torch.unique(views.index).cpu(), "test views", args.max_bad_fraction,
                   left_out.reasons)
    keys = torch.stack([views.index, views.segment, views.crop], 1)  # [M, 3]
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)  # drop the sampler's padding repeats
    first = torch.full((int(inverse.max()) + 1,), keys.shape[0], dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, torch.arange(keys.shape[0], device=keys.device), reduce="amin")
    return F.normalize(views.output[first], dim=-1), views.label[first]


def load_encoder(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The frozen encoder of --finetune (through its own trained final norm), or a random one (the
    same on every rank for a seed: the caller seeds torch)."""
    mean_pooling = pooling_for_frozen_features(args.finetune, args.model_key) if args.finetune else True
    model = MODELS[args.model](img_size=args.input_size, all_frames=args.num_frames, num_classes=0,
                               use_mean_pooling=mean_pooling).to(device)
    if args.finetune:
        load_pretrained_weights(model, args.finetune, args.model_key, args.model_prefix)
    return model


def main(args: argparse.Namespace) -> Dict[str, object]:
    env = start_run(args.device, args.output_dir, "knn.log")
    if bool(args.finetune) == args.random_init:
        raise SystemExit("give exactly one of --finetune CHECKPOINT and --random_init")
    precision = resolve_precision(args.precision, env.device)
    sampling = EVAL_DATA_SETS[args.data_set][1]
    nb_classes = nb_classes_of(args, EVAL_DATA_SETS)
    official = args.official_protocol
    ks = args.k or ([200] if official else [20])
    torch.manual_seed(args.seed)  # the same random encoder (and official head) on every rank
    if official:  # the official model: mean pooling, a fresh fc_norm and a random nb_classes head
        model = MODELS[args.model](img_size=args.input_size, all_frames=args.num_frames, num_classes=nb_classes,
                                   use_mean_pooling=True, init_scale=0.001).to(env.device)
        if args.finetune:
            load_pretrained_weights(model, args.finetune, args.model_key, args.model_prefix)
    else:
        model = load_encoder(args, env.device)
    if official:
        has_test = sampling != "repeat" and os.path.exists(os.path.join(args.data_path, "test.csv"))
        data, _ = read_split(args, args.data_path, "test" if has_test else "val", nb_classes)
        bank, bank_labels = official_features(model, data, args, env, sampling, precision)
        queries, labels = bank, bank_labels
    else:
        splits = {s: read_split(args, args.data_path, s, nb_classes)[0] for s in ("train", "val")}
        scoring = {}
        for split in ("train", "val"):
            feats, split_labels, index = scored_features(model, splits[split], args, env, sampling, precision,
                                                         what=f"{split} ({'bank' if split == 'train' else 'queries'})",
                                                         max_bad_fraction=args.max_bad_fraction,
                                                         desc=f"kNN features ({split})")
            scoring[split] = {"listed": len(splits[split]), "scored": int(index.numel())}
            if split == "train":
                bank, bank_labels = feats, split_labels
            else:
                queries, labels = feats, split_labels
    results = None
    if env.is_main:  # every rank holds the gathered features; one computes the kNN, on the device
        results = {"per_k": {}, "temperature": args.temperature, "num_train": int(bank.shape[0]),
                   "num_val": int(queries.shape[0]), "checkpoint": args.finetune or "random_init",
                   "protocol": "official" if official else "ours"}
        if not official:
            results["scored"] = scoring
        for k, votes in knn_votes(bank, bank_labels, queries, nb_classes, ks, args.temperature).items():
            k_used = used_k(k, bank.shape[0])
            results["per_k"][str(k)] = topk_accuracy(votes, labels)
            results.setdefault("k_used", {})[str(k)] = k_used  # the neighbours that voted: at most the bank
            logger.info("kNN k=%d T=%g: top-1 %.2f top-5 %.2f (%d bank, %d queries)", k_used, args.temperature,
                        results["per_k"][str(k)]["top1"], results["per_k"][str(k)]["top5"], bank.shape[0],
                        queries.shape[0])
        results.update(results["per_k"][str(ks[0])])
        with open(os.path.join(args.output_dir, "knn_results.json"), "w") as f:
            json.dump(results, f, indent=2)
    results = broadcast_object(results)
    write_config(args.output_dir, env, {**vars(args), "nb_classes": nb_classes, "precision": precision,
                                        "world_size": env.world_size})
    cleanup_distributed()
    return results


if __name__ == "__main__":
    run_driver(main, get_args())
