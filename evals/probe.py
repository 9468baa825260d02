"""Linear evaluation on cached frozen features: L-BFGS logistic regression, with kNN beside it.

One pass of the frozen encoder over the train and val videos (evals.common's extraction: one centre
clip per video, tokens pooled, L2-normalised) gives the features; they are standardised with the
train split's mean and std, and an L2-regularised multinomial logistic regression is fitted by
L-BFGS, its penalty chosen by stratified k-fold cross-validation on the train split only (the
DINO / SimCLR "linear eval on frozen features"). Fits take seconds, where the SGD linear probe of
run_class_finetuning.py --linear_probing trains for epochs on augmented clips.

--data_set ImageNet / CIFAR-100 probe images read as clips of --num_frames copies (evals.knn,
datasets/images.py); give the image root as --data_path.

Several labellings of the same videos (datasets/digits.py writes digit/, direction/, speed/) are
evaluated from one extraction: give each folder to --data_path.

    python -m evals.probe --model vit_tiny_patch16_224 --finetune output/sigma/checkpoint-latest.pth \\
        --data_set custom --data_path data/digits/digit data/digits/direction --data_root data/digits \\
        --input_size 48 --short_side_size 48 --num_frames 8 --output_dir output/probe

Results go to output_dir/probe_results.json: per labelling the probe's val top-1, its train
top-1, the chosen C and its cross-validated accuracy, and kNN top-1 for every --k. Needs
scikit-learn (requirements-test.txt).
"""
import argparse
import json
import logging
import os
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from distributed import cleanup_distributed
from evals.common import (EVAL_DATA_SETS, add_clip_input_flags, add_frozen_encoder_group, clip_input_rules,
                          knn_classify, load_encoder, read_split, require_one_encoder, scored_features, topk_accuracy,
                          used_k)
from flags import ArgumentParser, add_labelled_data_flags, add_run_flags, check_flags, resolve_precision
from run_log import write_config
from runtime import start_run
from shutdown import run_driver

logger = logging.getLogger("sigma")


def get_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser("python -m evals.probe", "logistic-regression probe and kNN on frozen features")
    add_frozen_encoder_group(p)
    g = p.add_argument_group("data")
    add_labelled_data_flags(g, EVAL_DATA_SETS, default="Kinetics-400", several_paths=True,
                            data_path_help="folders with train.csv and val.csv; several: labellings of the same "
                                           "videos (ImageNet / CIFAR-100: image roots, as evals.knn)",
                            nb_classes_help="class count (default: the data set's, or as many as labelled)")
    add_clip_input_flags(g)
    g = p.add_argument_group("probe")
    g.add_argument("--cv_folds", type=int, default=4, help="stratified folds of the train split that choose C")
    g.add_argument("--Cs", type=float, nargs="+", default=[1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0],
                   help="inverse L2 penalties tried (scikit-learn's C)")
    g.add_argument("--max_iter", type=int, default=1000, help="L-BFGS iterations per fit")
    g.add_argument("--k", type=int, nargs="+", default=[20], help="kNN neighbours (several values allowed)")
    g.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature")
    add_run_flags(p, output_dir="output/probe", precision=True)
    args = p.parse_args(argv)
    check_flags(p, args, {"k": (lambda v: min(v) >= 1, "one or more integers >= 1"),
                          "temperature": (lambda v: v > 0, "> 0"), "cv_folds": (lambda v: v >= 2, ">= 2"),
                          "max_iter": (lambda v: v >= 1, ">= 1"), **clip_input_rules(args)})
    return args


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
              Cs: Sequence[float], folds: int, max_iter: int, seed: int) -> Dict[str, float]:
    """Standardise, pick C by stratified k-fold CV on the train split, refit on all of it, score val.

    Args:
        train_x: [N, D] features, train_y [N] labels; val_x [M, D], val_y [M].
    Returns:
        {"top1": val accuracy %, "train_top1": %, "C": chosen C, "cv_top1": its mean CV accuracy %}.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise SystemExit("python -m evals.probe needs scikit-learn: pip install -r requirements-test.txt") from None

    def probe(C: float):
        # The scaler sits inside the pipeline, so every CV fold standardises with its own train part.
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))

    folds = min(folds, int(np.bincount(train_y).min()))
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 training videos of every class")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = [cross_val_score(probe(C), train_x, train_y, cv=cv).mean() for C in Cs]
    best = int(np.argmax(scores))  # ties: the strongest penalty, Cs being tried in increasing order
    model = probe(Cs[best]).fit(train_x, train_y)
    return {"top1": 100.0 * model.score(val_x, val_y), "train_top1": 100.0 * model.score(train_x, train_y),
            "C": float(Cs[best]), "cv_top1": 100.0 * float(scores[best])}


def main(args: argparse.Namespace) -> Dict[str, object]:
    env = start_run(args.device, args.output_dir, "probe.log")
    precision = resolve_precision(args.precision, env.device)
    nb_default, sampling, _ = EVAL_DATA_SETS[args.data_set]
    require_one_encoder(args)
    torch.manual_seed(args.seed)  # the same random encoder on every rank
    model = load_encoder(args, env.device).eval()
    # Features of a list of videos are computed once, whichever labellings share it.
    cache: Dict[Tuple[str, ...], Tuple[torch.Tensor, torch.Tensor]] = {}
    results: Dict[str, object] = {"checkpoint": args.finetune or "random_init", "labellings": {}}
    for data_path in args.data_path:
        splits = {s: read_split(args, data_path, s, args.nb_classes or nb_default) for s in ("train", "val")}
        feats = {}
        for split, (data, labels) in splits.items():
            key = (data_path, split) if sampling == "repeat" else tuple(s.path for s in data)
            if key not in cache:
                # Unreadable videos are left out (named; above --max_bad_fraction an error).
                x, _, index = scored_features(model, data, args, env, sampling, precision,
                                              what=f"{data_path} {split}", max_bad_fraction=args.max_bad_fraction,
                                              desc=f"probe features ({split})")
                cache[key] = x, index.cpu()
            x, index = cache[key]
            # Labels of this labelling, for the videos that were scored (features come in index order).
            feats[split] = (x, torch.tensor(labels)[index], len(labels))
        (train_x, train_y, train_n), (val_x, val_y, val_n) = feats["train"], feats["val"]
        nb_classes = args.nb_classes or nb_default or int(torch.cat([train_y, val_y]).max()) + 1
        entry = {"num_train": int(train_x.shape[0]), "num_val": int(val_x.shape[0]), "nb_classes": nb_classes,
                 "listed_train": train_n, "listed_val": val_n, "chance": 100.0 / nb_classes, "knn": {},
                 "k_used": {}}
        for k in args.k:
            votes = knn_classify(train_x, train_y, val_x, nb_classes, k, args.temperature)
            entry["knn"][str(k)] = topk_accuracy(votes, val_y)["top1"]
            entry["k_used"][str(k)] = used_k(k, train_x.shape[0])
        if env.is_main:
            entry["probe"] = fit_probe(train_x.numpy(), train_y.numpy(), val_x.numpy(), val_y.numpy(),
                                       Cs=args.Cs, folds=args.cv_folds, max_iter=args.max_iter, seed=args.seed)
            logger.info("%s: probe top-1 %.2f (train %.2f, C=%g, CV %.2f); kNN %s; chance %.1f", data_path,
                        entry["probe"]["top1"], entry["probe"]["train_top1"], entry["probe"]["C"],
                        entry["probe"]["cv_top1"],
                        ", ".join(f"k={k}: {v:.2f}" for k, v in entry["knn"].items()), entry["chance"])
        results["labellings"][os.path.basename(os.path.normpath(data_path))] = entry
    if env.is_main:
        with open(os.path.join(args.output_dir, "probe_results.json"), "w") as f:
            json.dump(results, f, indent=2)
    write_config(args.output_dir, env, {**vars(args), "precision": precision, "world_size": env.world_size})
    cleanup_distributed()
    return results


if __name__ == "__main__":
    run_driver(main, get_args())
