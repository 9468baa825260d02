"""Gather finished evaluation runs into the paper-style markdown table.

    python scripts/collect_results.py $OUTPUT_ROOT            # every run found under the folder
    python scripts/collect_results.py RUN_DIR [RUN_DIR ...]   # or these runs

A run is a folder written by run_class_finetuning.py (fine-tuning or --linear_probing) or
eval_knn.py. Its row reads:
- Method, Extra data and pretraining Epochs from the pretraining run its ``--finetune`` checkpoint
  came from (the checkpoint's folder: config.json's target_type / loss_func, the checkpoint's
  epoch number): pixel + L2 is VideoMAE, mlp SIGMA-MLP, dino_* SIGMA-DINO. A checkpoint without
  such a folder (an official release) gives "unknown"; no checkpoint at all, "random init".
- An ``--eval`` run tests the weights of its ``--resume`` or ``--finetune`` checkpoint (from its
  config.json, or, for runs that wrote none, the "loaded ... from PATH" line of its train.log):
  when that checkpoint lies in a fine-tuning run's folder, the row follows that run back to its
  pretraining, and its Protocol is that run's, marked "(eval)".
- Backbone from --model, Data from --data_set, views from --num_frames x --test_num_segment x
  --test_num_crop.
- Top-1 / Top-5 from test_results.json (multi-view test) or knn_results.json; a run without them
  reports its best validation top-1 in log.txt, marked "(val)".
"""
import argparse
import json
import os
import re
import sys
from typing import Dict, List, Optional

RESULT_FILES = ("test_results.json", "knn_results.json")
# run_class_finetuning.py's train.log line for the --finetune weights (modeling_finetune.load_pretrained_weights).
LOADED_LINE = re.compile(r"loaded \d+ tensors from (.+?); newly initialised")
BACKBONES = {"small": "ViT-S", "base": "ViT-B", "large": "ViT-L", "huge": "ViT-H"}
DATA_NAMES = {"SSV2": "SSv2", "Kinetics-400": "K400", "UCF101": "UCF101", "HMDB51": "HMDB51",
              "Diving48": "Diving48", "custom": "custom"}
EXTRA_DATA = {"dino_v1": "IN-1k", "dino_v2": "LVD-142M"}  # what the image teacher was trained on
COLUMNS = ("Method", "Extra data", "Backbone", "Data", "Protocol", "Frames x clips x crops", "Epochs",
           "Top-1", "Top-5", "Pretraining run", "Run")


def read_json(path: str) -> Optional[dict]:
    """The JSON object in `path`, or None when the file is missing or unreadable (reported)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"warning: skipping unreadable {path}: {e}", file=sys.stderr)
        return None


def read_log(path: str) -> List[dict]:
    """The JSON lines of a log.txt; lines that do not parse (a run killed mid-write) are skipped."""
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    return records


def is_eval_run(folder: str) -> bool:
    if any(os.path.isfile(os.path.join(folder, name)) for name in RESULT_FILES):
        return True
    config = read_json(os.path.join(folder, "config.json"))  # a fine-tuning run still in progress
    return bool(config) and "data_set" in config and "finetune" in config


def find_runs(paths: List[str]) -> List[str]:
    runs = []
    for path in paths:
        if not os.path.isdir(path):
            raise SystemExit(f"error: {path} is not a folder")
        for folder, subfolders, _ in os.walk(path):
            subfolders.sort()
            if is_eval_run(folder):
                runs.append(os.path.normpath(folder))
    return runs


def backbone(model: str) -> str:
    for size, name in BACKBONES.items():
        if f"_{size}_" in f"_{model}_":
            return name
    return model or "?"


def unknown_source() -> Dict[str, str]:
    return {"Method": "unknown", "Extra data": "?", "Epochs": "?", "Pretraining run": "-", "model": "", "protocol": ""}


def pretraining(checkpoint: str, hops: int = 0) -> Dict[str, str]:
    """Method, extra data, epochs and run name of the pretraining run that wrote `checkpoint`, and
    ("protocol") how the weights were trained when `checkpoint` came from a fine-tuning run."""
    info = unknown_source()
    if not checkpoint:
        info.update(Method="random init", **{"Extra data": "no", "Epochs": "0"})
        return info
    path = os.path.abspath(checkpoint)
    folder = path if os.path.isdir(path) else os.path.dirname(path)  # DeepSpeed resumes name a folder
    config = read_json(os.path.join(folder, "config.json"))
    if config and "data_set" in config and "target_type" not in config and hops < 4:
        # Weights of a fine-tuning run (an --eval of them): that run's own source, and its protocol.
        source = pretraining(config.get("finetune", ""), hops + 1)
        source.update(model=config.get("model") or source["model"],
                      protocol="linear" if config.get("linear_probing") else "fine-tune")
        return source
    if not config or "target_type" not in config:
        return info
    target = config["target_type"]
    if target == "pixel" and config.get("loss_func") == "L2":
        method = "VideoMAE"
    elif target == "mlp":
        method = "SIGMA-MLP"
    elif target.startswith("dino"):
        method = "SIGMA-DINO"
    else:
        method = "unknown"
    match = re.fullmatch(r"checkpoint-(\d+)\.pth", os.path.basename(checkpoint))
    if match:
        epochs = int(match.group(1)) + 1
    else:  # checkpoint-latest.pth or a renamed file: the epochs this run has logged
        logged = [r["epoch"] for r in read_log(os.path.join(folder, "log.txt")) if "epoch" in r]
        epochs = max(logged) + 1 if logged else config.get("epochs", "?")
    info.update({"Method": method, "Extra data": EXTRA_DATA.get(target, "no"), "Epochs": str(epochs),
                 "Pretraining run": os.path.basename(folder), "model": config.get("model", "")})
    return info


def logged_checkpoint(folder: str) -> str:
    """The checkpoint an --eval run without config.json loaded, from its train.log (last run's line)."""
    path, found = os.path.join(folder, "train.log"), ""
    if os.path.isfile(path):
        with open(path, errors="replace") as f:
            for line in f:
                match = LOADED_LINE.search(line)
                if match:
                    found = match.group(1)
    return found


def fmt(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def row(folder: str) -> Dict[str, str]:
    config = read_json(os.path.join(folder, "config.json")) or {}
    knn = read_json(os.path.join(folder, "knn_results.json"))
    test = read_json(os.path.join(folder, "test_results.json"))
    # run_class_finetuning.py writes config.json for every training run; an --eval run may not.
    evaluation = knn is None and (bool(config.get("eval")) or (not config and test is not None))
    if evaluation:
        checkpoint = config.get("resume") or config.get("finetune") or logged_checkpoint(folder)
    else:
        checkpoint = config.get("finetune") or (knn or {}).get("checkpoint", "")
    if checkpoint == "random_init":
        checkpoint = ""
    # An --eval run always loaded weights: none found means unknown ones, not a random init.
    source = pretraining(checkpoint) if checkpoint or not evaluation else unknown_source()
    frames = config.get("num_frames", "?")
    if knn is not None:
        protocol, views = "kNN", f"{frames}x1x1"
        top1, top5 = fmt(knn.get("top1")), fmt(knn.get("top5"))
    else:
        protocol = "linear" if config.get("linear_probing") else "fine-tune"
        if evaluation:
            protocol = f"{source['protocol']} (eval)" if source["protocol"] else "eval"
        if test is not None:
            if config:
                views = f"{frames}x{config.get('test_num_segment', '?')}x{config.get('test_num_crop', '?')}"
            else:
                views = f"?x{test.get('views', '?x?')}"
            top1, top5 = fmt(test.get("top1")), fmt(test.get("top5"))
        else:
            epochs = [r for r in read_log(os.path.join(folder, "log.txt")) if "val_acc1" in r]
            best = max(epochs, key=lambda r: r["val_acc1"]) if epochs else {}
            views = f"{frames}x1x1"
            top1 = f"{fmt(best.get('val_acc1'))} (val)" if best else "-"
            top5 = f"{fmt(best.get('val_acc5'))} (val)" if best else "-"
    model = config.get("model") or source["model"].replace("pretrain_videomae_", "vit_")
    return {"Method": source["Method"], "Extra data": source["Extra data"], "Backbone": backbone(model),
            "Data": DATA_NAMES.get(config.get("data_set"), config.get("data_set", "?")), "Protocol": protocol,
            "Frames x clips x crops": views, "Epochs": source["Epochs"], "Top-1": top1, "Top-5": top5,
            "Pretraining run": source["Pretraining run"], "Run": folder}


def markdown(rows: List[Dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="run folders, or folders to search for runs")
    args = p.parse_args(argv)
    runs = find_runs(args.paths)
    if not runs:
        raise SystemExit(f"error: no fine-tuning, linear-probe or kNN runs under {' '.join(args.paths)}")
    rows = sorted((row(r) for r in runs),
                  key=lambda r: (r["Data"], r["Protocol"], r["Backbone"], r["Method"], r["Epochs"], r["Run"]))
    table = markdown(rows)
    print(table)
    return table


if __name__ == "__main__":
    main()
