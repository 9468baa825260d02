"""Linear evaluation on cached frozen features: L-BFGS logistic regression, with kNN beside it.

One pass of the frozen encoder over the train and val videos (eval_knn's extraction: one centre
clip per video, tokens pooled, L2-normalised) gives the features; they are standardised with the
train split's mean and std, and an L2-regularised multinomial logistic regression is fitted by
L-BFGS, its penalty chosen by stratified k-fold cross-validation on the train split only (the
DINO / SimCLR "linear eval on frozen features"). Fits take seconds, where the SGD linear probe of
run_class_finetuning.py --linear_probing trains for epochs on augmented clips.

Several labellings of the same videos (datasets/digits.py writes digit/, direction/, speed/) are
evaluated from one extraction: give each folder to --data_path.

    python eval_probe.py --model vit_tiny_patch16_224 --finetune output/sigma/checkpoint-latest.pth \\
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

from datasets.annotations import read_annotations
from datasets.decoding import BACKENDS, DEFAULT_BACKEND
from datasets.video_dataset import DATA_SETS
from distributed import cleanup_distributed
from eval_knn import features, knn_classify, load_encoder, topk_accuracy
from modeling_finetune import MODELS
from flags import HelpFormatter, add_launcher_compat_flags
from run_log import write_config
from runtime import start_run
from shutdown import run_driver

logger = logging.getLogger("sigma")


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser("logistic-regression probe and kNN on frozen features", formatter_class=HelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="vit_base_patch16_224", choices=sorted(MODELS))
    g.add_argument("--finetune", default="", help="checkpoint whose encoder is evaluated (ours, SIGMA, VideoMAE)")
    g.add_argument("--random_init", action="store_true", help="evaluate a randomly initialised encoder (baseline)")
    g.add_argument("--model_key", default="model|module")
    g.add_argument("--model_prefix", default="")
    g = p.add_argument_group("data")
    g.add_argument("--data_set", default="custom", choices=sorted(DATA_SETS))
    g.add_argument("--data_path", required=True, nargs="+",
                   help="folders with train.csv and val.csv; several: labellings of the same videos")
    g.add_argument("--data_root", default="", help="prefix of relative video paths (default: each --data_path)")
    g.add_argument("--nb_classes", type=int, default=None, help="default: the data set's, or as many as labelled")
    g.add_argument("--num_frames", type=int, default=16)
    g.add_argument("--sampling_rate", type=int, default=4)
    g.add_argument("--input_size", type=int, default=224)
    g.add_argument("--short_side_size", type=int, default=224)
    g.add_argument("--video_backend", default=DEFAULT_BACKEND, choices=BACKENDS)
    g.add_argument("--batch_size", type=int, default=32)
    g.add_argument("--num_workers", type=int, default=8)
    g = p.add_argument_group("probe")
    g.add_argument("--cv_folds", type=int, default=4, help="stratified folds of the train split that choose C")
    g.add_argument("--Cs", type=float, nargs="+", default=[1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0],
                   help="inverse L2 penalties tried (scikit-learn's C)")
    g.add_argument("--max_iter", type=int, default=1000, help="L-BFGS iterations per fit")
    g.add_argument("--k", type=int, nargs="+", default=[20], help="kNN neighbours (several values allowed)")
    g.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature")
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default="output/probe")
    g.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"])
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--seed", type=int, default=0)
    add_launcher_compat_flags(g)
    return p.parse_args(argv)


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
        raise SystemExit("eval_probe.py needs scikit-learn: pip install -r requirements-test.txt") from None

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
    precision = args.precision or ("bf16" if env.device.type == "cuda" else "fp32")
    nb_default, sampling, _ = DATA_SETS[args.data_set]
    if bool(args.finetune) == args.random_init:
        raise SystemExit("give exactly one of --finetune CHECKPOINT and --random_init")
    torch.manual_seed(args.seed)  # the same random encoder on every rank
    model = load_encoder(args, env.device).eval()
    # Features of a list of videos are computed once, whichever labellings share it.
    cache: Dict[Tuple[str, ...], Tuple[torch.Tensor, torch.Tensor]] = {}
    results: Dict[str, object] = {"checkpoint": args.finetune or "random_init", "labellings": {}}
    for data_path in args.data_path:
        root = args.data_root or data_path
        splits = {s: read_annotations(os.path.join(data_path, f"{s}.csv"), root,
                                      nb_classes=args.nb_classes or nb_default) for s in ("train", "val")}
        feats = {}
        for split, samples in splits.items():
            key = tuple(s.path for s in samples)
            if key not in cache:
                cache[key] = features(model, samples, args, env, sampling, precision)
            x, _ = cache[key]
            # Labels of this labelling, by the video index features() keeps in order.
            feats[split] = (x, torch.tensor([s.label for s in samples]))
        (train_x, train_y), (val_x, val_y) = feats["train"], feats["val"]
        if train_x.shape[0] != len(splits["train"]) or val_x.shape[0] != len(splits["val"]):
            raise SystemExit("some videos were unreadable: the probe needs the features of every video")
        nb_classes = args.nb_classes or nb_default or int(torch.cat([train_y, val_y]).max()) + 1
        entry = {"num_train": int(train_x.shape[0]), "num_val": int(val_x.shape[0]), "nb_classes": nb_classes,
                 "chance": 100.0 / nb_classes, "knn": {}}
        for k in args.k:
            votes = knn_classify(train_x, train_y, val_x, nb_classes, k, args.temperature)
            entry["knn"][str(k)] = topk_accuracy(votes, val_y)["top1"]
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
