"""Gather finished evaluation runs into the paper's tables (markdown, one per benchmark).

    python scripts/collect_results.py $OUTPUT_ROOT            # every run found under the folder
    python scripts/collect_results.py RUN_DIR [RUN_DIR ...]   # or these runs

A run is a folder written by run_class_finetuning.py (fine-tuning, --linear_probing or --probe
attentive), python -m evals.knn, evals.probe or evals.segmentation. The tables:
- I. Classification: fine-tuning, linear and attentive probes, kNN and evals.probe's logistic
  regression, on videos and images (ImageNet-1K, CIFAR-100); Top-1 / Top-5.
- II. Unsupervised video object segmentation: clustering and overclustering mIoU
  (segmentation_results.json).
- III. SEVERE: runs of the scripts/severe launchers (--run_name severe_*) and every run on FineGym,
  Charades, UCFRep or a --examples subset; top-1, Charades mAP, or UCFRep's MAE / OBO (lower MAE
  is better), with the shift they test.
A row reads:
- Method, Extra data and pretraining Epochs from the pretraining run its ``--finetune`` checkpoint
  came from (the checkpoint's folder: config.json's target_type / loss_func, the checkpoint's
  epoch number): pixel + L2 is VideoMAE, mlp SIGMA-MLP, dino_* SIGMA-DINO. A Hugging Face folder
  is followed to the checkpoint `hf_weights.py export` recorded in its config.json ("sigma_source"),
  else named by what it holds (VideoMAE, SIGMA's side file, VideoMAEv2), its Pretraining run "HF
  <folder>". A checkpoint without such a folder (an official release) gives "unknown"; no
  checkpoint at all, "random init".
- An ``--eval`` run tests the weights of its ``--resume`` or ``--finetune`` checkpoint (from its
  config.json, or, for runs that wrote none, the "loaded ... from PATH" line of its train.log):
  when that checkpoint lies in a fine-tuning run's folder, the row follows that run back to its
  pretraining, and its Protocol is that run's, marked "(eval)".
- Backbone from --model, Data from --data_set, views from --num_frames x --test_num_segment x
  --test_num_crop.
- Scores from test_results.json (multi-view test; the attentive probe's head chosen on validation,
  "head" of "per_head"), knn_results.json, probe_results.json or segmentation_results.json; a
  training run without them reports its best validation score in log.txt, marked "(val)". A run
  without results whose log (train.log, knn.log, ...) ends with an error is marked "failed", its
  cause printed to stderr.
"""
import argparse
import json
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from flags import ArgumentParser, DocHelpFormatter  # noqa: E402

RESULT_FILES = ("test_results.json", "knn_results.json", "probe_results.json", "segmentation_results.json")
LOG_FILES = ("train.log", "knn.log", "probe.log", "segmentation.log")  # each driver's, as runtime.start_run names it
# run_class_finetuning.py's train.log line for the --finetune weights (weights.load_pretrained_weights).
LOADED_LINE = re.compile(r"loaded \d+ tensors from (.+?); newly initialised")
BACKBONES = {"small": "ViT-S", "base": "ViT-B", "large": "ViT-L", "huge": "ViT-H"}
DATA_NAMES = {"SSV2": "SSv2", "Kinetics-400": "K400", "UCF101": "UCF101", "HMDB51": "HMDB51",
              "Diving48": "Diving48", "custom": "custom", "ImageNet": "IN-1K", "CIFAR-100": "CIFAR-100",
              "GYM99": "Gym99", "FX-S1": "FX-S1", "UB-S1": "UB-S1", "Charades": "Charades", "UCFRep": "UCFRep",
              "davis": "DAVIS-2017", "ytvos": "YTVOS"}
EXTRA_DATA = {"dino_v1": "IN-1k", "dino_v2": "LVD-142M"}  # what the image teacher was trained on
COLUMNS = ("Method", "Extra data", "Backbone", "Data", "Protocol", "Frames x clips x crops", "Epochs",
           "Top-1", "Top-5", "Pretraining run", "Run")
SEGMENTATION_COLUMNS = ("Method", "Extra data", "Backbone", "Data", "Frames", "Epochs", "Clustering mIoU",
                        "Overclustering mIoU", "Clips", "Pretraining run", "Run")
SEVERE_COLUMNS = ("Method", "Extra data", "Backbone", "Shift", "Data", "Frames x clips x crops", "Epochs", "Metric",
                  "Score", "Pretraining run", "Run")
TABLES = {"I": ("I. Classification: fine-tuning, linear / attentive probes, kNN", COLUMNS),
          "II": ("II. Unsupervised video object segmentation (mIoU, %)", SEGMENTATION_COLUMNS),
          "III": ("III. SEVERE (MAE: lower is better)", SEVERE_COLUMNS)}
SEVERE_DATA_SETS = {"GYM99", "FX-S1", "UB-S1", "Charades", "UCFRep"}
# The scripts/severe launcher names (--run_name severe_<shift>_...) and the shift each row tests.
SHIFTS = {"domain": "domain", "samples": "sample size", "granularity": "granularity", "task": "task"}


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


def method_of(target: str, loss_func: Optional[str]) -> str:
    if target == "pixel" and loss_func in ("L2", None):
        return "VideoMAE"
    if target == "mlp":
        return "SIGMA-MLP"
    return "SIGMA-DINO" if target.startswith("dino") else "unknown"


def epochs_of(checkpoint: str, folder: str, config: dict) -> str:
    """checkpoint-{N}.pth: N + 1; else (checkpoint-latest.pth, a renamed file) the epochs its run logged."""
    match = re.fullmatch(r"checkpoint-(\d+)\.pth", os.path.basename(checkpoint))
    if match:
        return str(int(match.group(1)) + 1)
    logged = [r["epoch"] for r in read_log(os.path.join(folder, "log.txt")) if "epoch" in r]
    return str(max(logged) + 1 if logged else config.get("epochs", "?"))


def hub_source(folder: str, config: dict, hops: int) -> Dict[str, str]:
    """The source of a Hugging Face folder (a transformers config.json): the checkpoint that
    hf_weights.py export recorded in it, else what the folder itself shows (a pixel decoder:
    VideoMAE; SIGMA's side file: SIGMA; a VideoMAEv2 Hub config), named by the folder."""
    recorded = config.get("sigma_source") if isinstance(config.get("sigma_source"), dict) else {}
    checkpoint = str(recorded.get("checkpoint", ""))
    if checkpoint and os.path.exists(checkpoint) and hops < 4:
        return pretraining(checkpoint, hops + 1)
    info = unknown_source()
    if recorded.get("target_type"):
        method = method_of(recorded["target_type"], recorded.get("loss_func"))
        info.update({"Extra data": EXTRA_DATA.get(recorded["target_type"], "no"),
                     "Epochs": epochs_of(checkpoint, os.path.dirname(checkpoint), {})})
    elif "model_config" in config:
        method = "VideoMAEv2"
    elif os.path.isfile(os.path.join(folder, "sigma_extras.safetensors")):
        method = "SIGMA"
    else:  # a transformers VideoMAE folder (MCG-NJU's releases, or an export without its record)
        method = "VideoMAE"
        info["Extra data"] = "no"
    info.update({"Method": method, "Pretraining run": f"HF {os.path.basename(folder)}",
                 "model": str(recorded.get("model", ""))})
    return info


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
                      protocol=frozen_protocol(config))
        return source
    if config and ("model_type" in config or "model_config" in config):  # a Hugging Face folder
        return hub_source(folder, config, hops)
    if not config or "target_type" not in config:
        return info
    target = config["target_type"]
    info.update({"Method": method_of(target, config.get("loss_func", "")), "Extra data": EXTRA_DATA.get(target, "no"),
                 "Epochs": epochs_of(checkpoint, folder, config), "Pretraining run": os.path.basename(folder),
                 "model": config.get("model", "")})
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


def fmt(value, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def frozen_protocol(config: dict) -> str:
    if config.get("linear_probing") or config.get("probe") == "linear":
        return "linear"
    return "attentive" if config.get("probe") == "attentive" else "fine-tune"


def source_of(folder: str, config: dict, test: Optional[dict], fallback: str = "") -> Tuple[Dict[str, str], bool]:
    """(pretraining source, is an --eval run) of a run_class_finetuning.py run (or of `fallback`'s
    checkpoint for the other drivers)."""
    evaluation = not fallback and (bool(config.get("eval")) or (not config and test is not None))
    if evaluation:
        checkpoint = config.get("resume") or config.get("finetune") or logged_checkpoint(folder)
    else:
        checkpoint = config.get("finetune") or fallback
    if checkpoint == "random_init":
        checkpoint = ""
    # An --eval run always loaded weights: none found means unknown ones, not a random init.
    return (pretraining(checkpoint) if checkpoint or not evaluation else unknown_source()), evaluation


def identity(config: dict, source: Dict[str, str], folder: str) -> Dict[str, str]:
    """The columns every table shares."""
    model = config.get("model") or source["model"].replace("pretrain_videomae_", "vit_")
    return {"Method": source["Method"], "Extra data": source["Extra data"], "Backbone": backbone(model),
            "Data": DATA_NAMES.get(config.get("data_set"), config.get("data_set", "?")), "Epochs": source["Epochs"],
            "Pretraining run": source["Pretraining run"], "Run": folder}


def best_validation(folder: str, key: str, higher: bool = True) -> dict:
    """The log.txt epoch record with the best val_<key>, or {}."""
    epochs = [r for r in read_log(os.path.join(folder, "log.txt")) if f"val_{key}" in r]
    if not epochs:
        return {}
    return (max if higher else min)(epochs, key=lambda r: r[f"val_{key}"])


def views_of(config: dict, test: Optional[dict]) -> str:
    frames = config.get("num_frames", "?")
    if test is None:
        return f"{frames}x1x1"
    if config:
        return f"{frames}x{config.get('test_num_segment', '?')}x{config.get('test_num_crop', '?')}"
    return f"?x{test.get('views', '?x?')}"


def classification_scores(folder: str, test: Optional[dict]) -> Tuple[str, str]:
    """(Top-1, Top-5) of the test, else the best validation epoch's, marked "(val)"."""
    if test is not None:
        return fmt(test.get("top1", test.get("acc1"))), fmt(test.get("top5", test.get("acc5")))
    best = best_validation(folder, "acc1")
    if not best:
        return "-", "-"
    return f"{fmt(best.get('val_acc1'))} (val)", f"{fmt(best.get('val_acc5'))} (val)"


def task_score(folder: str, kind: str, test: Optional[dict]) -> Tuple[str, str]:
    """(Metric, Score) of a SEVERE run: top-1, mAP, or MAE / OBO (fractions), test else best val."""
    if kind == "classification":
        return "top-1", classification_scores(folder, test)[0]
    if kind == "multilabel":
        if test is not None:
            return "mAP", fmt(test.get("mAP"))
        best = best_validation(folder, "mAP")
        return "mAP", f"{fmt(best['val_mAP'])} (val)" if best else "-"
    if test is not None:
        return "MAE / OBO", f"{fmt(test.get('mae'), 3)} / {fmt(test.get('obo'), 3)}"
    best = best_validation(folder, "mae", higher=False)
    return "MAE / OBO", f"{fmt(best['val_mae'], 3)} / {fmt(best.get('val_obo'), 3)} (val)" if best else "-"


def is_severe(config: dict) -> bool:
    return (str(config.get("run_name", "")).startswith("severe_") or config.get("data_set") in SEVERE_DATA_SETS
            or bool(config.get("examples")))


def severe_shift(config: dict) -> str:
    name = str(config.get("run_name", ""))
    if name.startswith("severe_") and name.split("_")[1] in SHIFTS:
        return SHIFTS[name.split("_")[1]]
    if config.get("data_set") in ("Charades", "UCFRep"):
        return "task"
    if config.get("data_set") in ("FX-S1", "UB-S1"):
        return "granularity"
    return "sample size" if config.get("examples") else "domain"


def finetune_row(folder: str, config: dict, test: Optional[dict]) -> Tuple[str, Dict[str, str]]:
    """(table, row) of a run_class_finetuning.py run: Table III for SEVERE runs, else Table I."""
    source, evaluation = source_of(folder, config, test)
    row = identity(config, source, folder)
    row["Frames x clips x crops"] = views_of(config, test)
    if is_severe(config):
        kind = (test or {}).get("task") or config.get("task") or "classification"
        if config.get("examples"):
            row["Data"] += f" ({config['examples']})"
        row["Metric"], row["Score"] = task_score(folder, kind, test)
        return "III", {**row, "Shift": severe_shift(config)}
    protocol = frozen_protocol(config)
    if evaluation:
        protocol = f"{source['protocol']} (eval)" if source["protocol"] else "eval"
    if test is not None and "per_head" in test:
        protocol += f" (head {test.get('head', '?')} of {len(test['per_head'])})"
    row["Protocol"] = protocol
    row["Top-1"], row["Top-5"] = classification_scores(folder, test)
    return "I", row


def knn_row(folder: str, config: dict, knn: dict) -> Tuple[str, Dict[str, str]]:
    source, _ = source_of(folder, config, None, fallback=knn.get("checkpoint", "") or "random_init")
    row = identity(config, source, folder)
    row.update({"Protocol": "kNN", "Frames x clips x crops": f"{config.get('num_frames', '?')}x1x1",
                "Top-1": fmt(knn.get("top1")), "Top-5": fmt(knn.get("top5"))})
    return "I", row


def probe_rows(folder: str, config: dict, probe: dict) -> List[Tuple[str, Dict[str, str]]]:
    """One Table I row per labelling of an evals.probe run (logistic regression on cached features)."""
    source, _ = source_of(folder, config, None, fallback=probe.get("checkpoint", "") or "random_init")
    labellings = probe.get("labellings") or {}
    rows = []
    for name, entry in labellings.items():
        row = identity(config, source, folder)
        if len(labellings) > 1:
            row["Data"] += f" ({name})"
        row.update({"Protocol": "logistic regression", "Top-5": "-",
                    "Frames x clips x crops": f"{config.get('num_frames', '?')}x1x1",
                    "Top-1": fmt((entry.get("probe") or {}).get("top1"))})
        rows.append(("I", row))
    return rows


def segmentation_row(folder: str, config: dict, results: Optional[dict]) -> Tuple[str, Dict[str, str]]:
    results = results or {}
    source, _ = source_of(folder, config, None, fallback=results.get("checkpoint", "") or "random_init")
    row = identity({**config, "data_set": results.get("data_set", config.get("data_set"))}, source, folder)
    clips = (results.get("clustering") or {}).get("num_clips")
    row.update({"Frames": str(results.get("num_frames", config.get("num_frames", "?"))),
                "Clustering mIoU": fmt((results.get("clustering") or {}).get("miou")),
                "Overclustering mIoU": fmt((results.get("overclustering") or {}).get("miou")),
                "Clips": str(clips) if clips is not None else "-"})
    return "II", row


def failure(folder: str) -> Optional[str]:
    """The error a run's log ends with (shutdown.run_driver's "run failed: ..." line), or None."""
    for name in LOG_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))  # the end is enough: logs of long runs are large
            lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        if lines and " ERROR " in lines[-1]:
            return lines[-1].split(" ERROR ", 1)[1].split(": ", 1)[-1]
    return None


def mark_failed(table: str, row: Dict[str, str]) -> None:
    """A failed run's score columns say so (not "-", which reads as "not measured")."""
    for column in {"I": ("Top-1",), "II": ("Clustering mIoU", "Overclustering mIoU"), "III": ("Score",)}[table]:
        if row.get(column, "-").startswith("-"):
            row[column] = "failed"
        else:  # the best validation score it reached before failing
            row[column] = row[column].replace("(val)", "(val, failed)")


def rows_of(folder: str) -> List[Tuple[str, Dict[str, str]]]:
    """(table, row) pairs of one run folder; a run without results whose log ends with an error is
    marked failed (its cause printed to stderr)."""
    rows = _rows_of(folder)
    if not any(os.path.isfile(os.path.join(folder, name)) for name in RESULT_FILES):
        cause = failure(folder)
        if cause:
            print(f"warning: {folder} failed: {cause}", file=sys.stderr)
            for table, row in rows:
                mark_failed(table, row)
    return rows


def _rows_of(folder: str) -> List[Tuple[str, Dict[str, str]]]:
    config = read_json(os.path.join(folder, "config.json")) or {}
    found = {name: read_json(os.path.join(folder, name)) for name in RESULT_FILES}
    if found["segmentation_results.json"] is not None or "overclustering_k" in config:
        return [segmentation_row(folder, config, found["segmentation_results.json"])]
    if found["probe_results.json"] is not None:
        return probe_rows(folder, config, found["probe_results.json"])
    if found["knn_results.json"] is not None:
        return [knn_row(folder, config, found["knn_results.json"])]
    return [finetune_row(folder, config, found["test_results.json"])]


def markdown(rows: List[Dict[str, str]], columns: Sequence[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(r[c] for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def collect(paths: List[str]) -> Dict[str, List[Dict[str, str]]]:
    """{table: sorted rows} of every run under `paths` ("I", "II", "III"; empty tables left out)."""
    tables: Dict[str, List[Dict[str, str]]] = {}
    for folder in find_runs(paths):
        for table, r in rows_of(folder):
            tables.setdefault(table, []).append(r)
    shift_order = list(SHIFTS.values())
    keys = {"I": lambda r: (r["Data"], r["Protocol"], r["Backbone"], r["Method"], r["Epochs"], r["Run"]),
            "II": lambda r: (r["Data"], r["Backbone"], r["Method"], r["Epochs"], r["Run"]),
            "III": lambda r: (shift_order.index(r["Shift"]), r["Data"], r["Backbone"], r["Method"], r["Run"])}
    return {t: sorted(tables[t], key=keys[t]) for t in TABLES if t in tables}


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("scripts/collect_results.py", __doc__, formatter_class=DocHelpFormatter)
    p.add_argument("paths", nargs="+", help="run folders, or folders to search for runs")
    return p


def main(argv=None) -> str:
    args = get_parser().parse_args(argv)
    tables = collect(args.paths)
    if not tables:
        raise SystemExit(f"error: no evaluation runs (fine-tuning, linear / attentive probe, kNN, evals.probe, "
                         f"segmentation) under {' '.join(args.paths)}")
    text = "\n\n".join(f"## {TABLES[t][0]}\n\n{markdown(rows, TABLES[t][1])}" for t, rows in tables.items())
    print(text)
    return text


if __name__ == "__main__":
    main()
