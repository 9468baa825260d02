"""Weighted k-nearest-neighbour classification of frozen encoder features (DINO's kNN protocol).

The train split's features are the bank and the val split's are the queries: one deterministic
centre clip per video, encoder in eval mode, tokens pooled and L2-normalised. Each query's k most
similar bank videos vote for their labels with weight exp(cosine / temperature).

--official_protocol is the official SIGMA eval_knn.py (QUVA-Lab/SIGMA, commit
13e9c1720be401f99e0512c77db10f2fb7c1ea89) instead: k 200, every test view (--test_num_segment x
--test_num_crop of test.csv, else val.csv) is both a bank entry and a query (so each query finds
itself), and the features are the outputs of the randomly initialised classification head
(nb_classes wide, after mean pooling and a fresh fc_norm), L2-normalised.

    python -m evals.knn --model vit_small_patch16_224 --finetune output/demo/checkpoint-latest.pth \\
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
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

from distributed import broadcast_object, cleanup_distributed
from engine_for_finetuning import gather_views, predict_views
from evals.common import (EVAL_DATA_SETS, LeftOut, account_scored, add_clip_input_flags, add_frozen_encoder_group,
                          clip_input_rules, eval_dataset, eval_loader, item_names, knn_votes, load_encoder,
                          read_split, require_one_encoder, scored_features, topk_accuracy, used_k)
from flags import (ArgumentParser, add_labelled_data_flags, add_run_flags, check_flags, check_nb_classes,
                   nb_classes_of, resolve_precision)
from modeling_finetune import MODELS
from run_log import write_config
from runtime import start_run
from shutdown import run_driver
from weights import load_pretrained_weights

logger = logging.getLogger("sigma")

DATA_PATH_HELP = ("folder with train.csv (bank) and val.csv (queries); ImageNet: the folder with train/<wnid>/ and "
                  "val/<wnid>/; CIFAR-100: the folder with cifar-100-python/ (val = its test batch)")


def get_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser("python -m evals.knn", "kNN evaluation of frozen features")
    add_frozen_encoder_group(p)
    g = p.add_argument_group("data")
    add_labelled_data_flags(g, EVAL_DATA_SETS, default="Kinetics-400", data_path_help=DATA_PATH_HELP)
    add_clip_input_flags(g)
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
                          "temperature": (lambda v: v > 0, "> 0"), **clip_input_rules(args)})
    check_nb_classes(p, args, EVAL_DATA_SETS)
    return args


def official_features(model, samples: Sequence, args, env, sampling: str, precision: str):
    """(L2-normalised head outputs [M, nb_classes], labels [M]) of every test view of every video
    (of every image: one segment, test_num_crop crops)."""
    segments = 1 if sampling == "repeat" else args.test_num_segment
    dataset = eval_dataset(samples, args, "test", sampling, views=(segments, args.test_num_crop))
    items = max(1, args.batch_size // args.test_num_crop)
    loader = eval_loader(dataset, batch_size=items, num_workers=args.num_workers, env=env)
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


def main(args: argparse.Namespace) -> Dict[str, object]:
    env = start_run(args.device, args.output_dir, "knn.log")
    require_one_encoder(args)
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
