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

Features are extracted on every process's share (torchrun / Slurm like the other scripts) and
gathered; results go to output_dir/knn_results.json.
"""
import argparse
import json
import logging
import os
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

from datasets.annotations import read_annotations
from datasets.decoding import BACKENDS, DEFAULT_BACKEND
from datasets.sampler import ShardSampler
from datasets.video_dataset import DATA_SETS, ClipConfig, VideoClipDataset, collate_clips
from distributed import broadcast_object, cleanup_distributed
from engine_for_finetuning import gather_views, merge_views, predict_views
from modeling_finetune import MODELS, load_pretrained_weights, pooling_for_frozen_features
from flags import HelpFormatter, add_launcher_compat_flags, check_flags, clip_rules
from run_log import write_config
from runtime import start_run
from shutdown import WORKER_INIT, run_driver

logger = logging.getLogger("sigma")


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser("kNN evaluation of frozen features", formatter_class=HelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="vit_base_patch16_224", choices=sorted(MODELS))
    g.add_argument("--finetune", default="", help="checkpoint whose encoder is evaluated (ours, SIGMA, VideoMAE)")
    g.add_argument("--random_init", action="store_true", help="evaluate a randomly initialised encoder (baseline)")
    g.add_argument("--model_key", default="model|module")
    g.add_argument("--model_prefix", default="")
    g = p.add_argument_group("data")
    g.add_argument("--data_set", default="Kinetics-400", choices=sorted(DATA_SETS))
    g.add_argument("--data_path", required=True, help="folder with train.csv (bank) and val.csv (queries)")
    g.add_argument("--data_root", default="", help="prefix of relative video paths (default: --data_path)")
    g.add_argument("--nb_classes", type=int, default=None)
    g.add_argument("--num_frames", type=int, default=16)
    g.add_argument("--sampling_rate", type=int, default=4)
    g.add_argument("--input_size", type=int, default=224)
    g.add_argument("--short_side_size", type=int, default=224)
    g.add_argument("--video_backend", default=DEFAULT_BACKEND, choices=BACKENDS)
    g.add_argument("--batch_size", type=int, default=32)
    g.add_argument("--num_workers", type=int, default=8)
    g = p.add_argument_group("kNN")
    g.add_argument("--k", type=int, nargs="+", default=None,
                   help="neighbours, several values allowed (default: 20; 200 with --official_protocol)")
    g.add_argument("--temperature", type=float, default=0.07)
    g.add_argument("--official_protocol", action="store_true",
                   help="the official SIGMA kNN: k 200, test-set views as bank and queries, head outputs")
    g.add_argument("--test_num_segment", type=int, default=2, help="views per video with --official_protocol")
    g.add_argument("--test_num_crop", type=int, default=3)
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default="output/knn")
    g.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"])
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--seed", type=int, default=0)
    add_launcher_compat_flags(g)
    args = p.parse_args(argv)
    check_flags(p, args, {"k": (lambda v: min(v) >= 1, "one or more integers >= 1"),
                          "temperature": (lambda v: v > 0, "> 0"), "batch_size": (lambda v: v >= 1, ">= 1"),
                          "num_workers": (lambda v: v >= 0, ">= 0"), **clip_rules(args)})
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


def features(model, samples: Sequence, args, env, sampling: str, precision: str):
    """(pooled L2-normalised features [V, D], labels [V]) of every video, one centre clip each."""
    clip = ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate, sampling=sampling,
                      input_size=args.input_size, short_side_size=args.short_side_size)
    dataset = VideoClipDataset(samples, "val", clip=clip, video_backend=args.video_backend, seed=args.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=ShardSampler(len(dataset), env.world_size, env.rank),
        num_workers=args.num_workers, collate_fn=collate_clips, pin_memory=env.device.type == "cuda",
        worker_init_fn=WORKER_INIT)
    views = predict_views(lambda v: F.normalize(model.forward_features(v).float(), dim=-1), model, loader,
                          device=env.device, precision=precision)
    videos = merge_views(gather_views(views, env))
    if videos.index.numel() != len(samples):
        logger.warning("%d of %d videos were unreadable and left out", len(samples) - videos.index.numel(),
                       len(samples))
    return F.normalize(videos.output, dim=-1), videos.label


def official_features(model, samples: Sequence, args, env, sampling: str, precision: str):
    """(L2-normalised head outputs [M, nb_classes], labels [M]) of every test view of every video."""
    clip = ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate, sampling=sampling,
                      input_size=args.input_size, short_side_size=args.short_side_size)
    dataset = VideoClipDataset(samples, "test", clip=clip, test_num_segment=args.test_num_segment,
                               test_num_crop=args.test_num_crop, video_backend=args.video_backend, seed=args.seed)
    items = max(1, args.batch_size // args.test_num_crop)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=items, sampler=ShardSampler(len(dataset), env.world_size, env.rank),
        num_workers=args.num_workers, collate_fn=collate_clips, pin_memory=env.device.type == "cuda",
        worker_init_fn=WORKER_INIT)
    views = predict_views(lambda v: model(v).float(), model, loader, device=env.device, precision=precision)
    views = gather_views(views, env)  # on the device: the kNN runs there
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
    precision = args.precision or ("bf16" if env.device.type == "cuda" else "fp32")
    nb_default, sampling, _ = DATA_SETS[args.data_set]
    nb_classes = args.nb_classes or nb_default
    if nb_classes is None:
        raise SystemExit(f"--data_set {args.data_set} needs --nb_classes")
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
    root = args.data_root or args.data_path
    if official:
        test_csv = os.path.join(args.data_path, "test.csv")
        csv_path = test_csv if os.path.exists(test_csv) else os.path.join(args.data_path, "val.csv")
        bank, bank_labels = official_features(model, read_annotations(csv_path, root, nb_classes=nb_classes),
                                              args, env, sampling, precision)
        queries, labels = bank, bank_labels
    else:
        splits = {s: read_annotations(os.path.join(args.data_path, f"{s}.csv"), root, nb_classes=nb_classes)
                  for s in ("train", "val")}
        bank, bank_labels = features(model, splits["train"], args, env, sampling, precision)
        queries, labels = features(model, splits["val"], args, env, sampling, precision)
    results = None
    if env.is_main:  # every rank holds the gathered features; one computes the kNN, on the device
        results = {"per_k": {}, "temperature": args.temperature, "num_train": int(bank.shape[0]),
                   "num_val": int(queries.shape[0]), "checkpoint": args.finetune or "random_init",
                   "protocol": "official" if official else "ours"}
        for k, votes in knn_votes(bank, bank_labels, queries, nb_classes, ks, args.temperature).items():
            results["per_k"][str(k)] = topk_accuracy(votes, labels)
            logger.info("kNN k=%d T=%g: top-1 %.2f top-5 %.2f (%d bank, %d queries)", k, args.temperature,
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
