"""Launchers in scripts/ and the results tables.

Every launcher is checked for syntax (bash -n, shellcheck), its Slurm twin for the requeue
contract, and its command, printed by SIGMA_DRY_RUN=1, is parsed by the driver it starts, so a
recipe flag the driver does not know fails here and not on a cluster. One torchrun launcher runs
for real in a reduced form; tests/slurm/run_slurm_test.sh submits the .sbatch files to Slurm.
"""
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
LAUNCHERS = sorted(glob.glob(os.path.join(SCRIPTS, "*", "*.sh")))
SBATCH = sorted(glob.glob(os.path.join(SCRIPTS, "*", "*.sbatch")))
SHELL_FILES = (LAUNCHERS + SBATCH + [os.path.join(SCRIPTS, "common.sh"), os.path.join(ROOT, ".ci", "run")]
               + sorted(glob.glob(os.path.join(ROOT, "tests", "slurm", "*.sh"))))
sys.path.insert(0, SCRIPTS)
import collect_results  # noqa: E402

FAKE_ENV = {"SSV2_ROOT": "/data/ssv2", "K400_ROOT": "/data/k400", "UCF101_ROOT": "/data/ucf101",
            "HMDB51_ROOT": "/data/hmdb51", "OUTPUT_ROOT": "/runs", "DINO_WEIGHTS": "/weights",
            "GYM_ROOT": "/data/finegym", "CHARADES_ROOT": "/data/charades", "UCFREP_ROOT": "/data/ucfrep",
            "IMAGENET_ROOT": "/data/imagenet", "CIFAR100_ROOT": "/data/cifar",
            "PRETRAINED": "/runs/sigma_dino_vitb_k400/checkpoint-799.pth", "DATASET": "k400",
            "NPROC_PER_NODE": "8", "SIGMA_DRY_RUN": "1"}


def rel(path):
    return os.path.relpath(path, ROOT)


def run_launcher(path, env=None, args=()):
    full = {k: v for k, v in os.environ.items() if k not in FAKE_ENV and not k.startswith("SLURM_")}
    full.update(FAKE_ENV if env is None else env)
    return subprocess.run(["bash", path, *args], env=full, capture_output=True, text=True, timeout=60)


def dry_run(path, env=None, args=()):
    """The argv the launcher would start: (launcher words, driver path or `-m` module, driver arguments)."""
    out = run_launcher(path, env, args)
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    driver = next(i for i, w in enumerate(words)
                  if w.endswith(".py") or (words[i - 1] == "-m" and w != "torch.distributed.run"))
    return words[:driver], words[driver], words[driver + 1:]


@pytest.mark.parametrize("path", SHELL_FILES, ids=rel)
def test_bash_syntax(path):
    out = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck; .ci/run installs it)")
    out = subprocess.run(["shellcheck", "-x", *SHELL_FILES], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_launcher_has_a_slurm_twin():
    assert len(LAUNCHERS) >= 20
    assert [p[:-3] for p in LAUNCHERS] == [p[:-7] for p in SBATCH]


@pytest.mark.parametrize("path", SBATCH, ids=rel)
def test_sbatch_requeue_contract(path):
    text = open(path).read()
    for line in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@", "#SBATCH --open-mode=append",
                 "export SIGMA_LAUNCHER=srun"):
        assert line in text, f"{rel(path)} lacks {line!r}"
    twin = os.path.relpath(path[:-len(".sbatch")] + ".sh", ROOT)
    assert f'exec bash "${{SIGMA_ROOT:-$SLURM_SUBMIT_DIR}}/{twin}" "$@"' in text


@pytest.mark.parametrize("path", [p for p in LAUNCHERS if "/pretrain/" in p], ids=rel)
def test_pretraining_recipe_parses(path):
    import run_sigma_pretraining

    launcher, driver, argv = dry_run(path)
    assert launcher[-5:] == ["--standalone", "--nnodes", "1", "--nproc_per_node", "8"]
    assert driver == os.path.join(ROOT, "run_sigma_pretraining.py")
    args = run_sigma_pretraining.get_args(argv)
    name = os.path.basename(path)[:-3]
    method = name.split("_")[0] if name.startswith("videomae") else "_".join(name.split("_")[:2])
    assert (args.target_type, args.loss_func) == {"videomae": ("pixel", "L2"), "sigma_mlp": ("mlp", "SWAV"),
                                                  "sigma_dino": ("dino_v1", "SWAV")}[method]
    assert args.model == {"vits": "pretrain_videomae_small_patch16_224",
                          "vitb": "pretrain_videomae_base_patch16_224"}[name.split("_")[-2]]
    assert args.sampling_rate == {"ssv2": 2, "k400": 4}[name.split("_")[-1]]
    assert args.output_dir == f"/runs/{name}" and args.mask_ratio == 0.9 and args.mask_type == "tube"
    if method == "sigma_dino":
        assert args.teacher_ckpt == "/weights/dino_vitbase16_pretrain.pth"
    # The recipe's global batch on the 8 GPUs of one node.
    text = open(path).read()
    global_batch = int(text.split("GLOBAL_BATCH=${GLOBAL_BATCH:-")[1].split("}")[0])
    assert args.batch_size * args.accum_iter * 8 == global_batch


@pytest.mark.parametrize("path", [p for p in LAUNCHERS if "/finetune/" in p or os.path.basename(p) in
                                  ("knn.sh", "linear_probe.sh")], ids=rel)
def test_evaluation_recipe_parses(path):
    name = os.path.basename(path)[:-3]
    if name == "knn":
        import evals.knn as driver_module
    else:
        import run_class_finetuning as driver_module
    _, driver, argv = dry_run(path)
    assert driver == (driver_module.__name__ if name == "knn" else driver_module.__file__)
    args = driver_module.get_args(argv)
    assert args.finetune == FAKE_ENV["PRETRAINED"]
    dataset = name.split("_")[-1] if name.startswith("finetune") else "k400"
    assert args.data_set == {"ssv2": "SSV2", "k400": "Kinetics-400", "ucf101": "UCF101", "hmdb51": "HMDB51"}[dataset]
    assert args.data_path == f"/data/{dataset}/annotations" and args.data_root == f"/data/{dataset}"
    run = {"linear_probe": "linear_probe_k400", "knn": "knn_k400"}.get(name, name)
    assert args.output_dir == f"/runs/{run}/sigma_dino_vitb_k400-checkpoint-799"
    if name != "knn":
        views = (7, 3) if name == "finetune_sigma_head_vitb_k400" else (2, 3) if dataset == "ssv2" else (5, 3)
        assert (args.test_num_segment, args.test_num_crop) == views
        assert args.linear_probing == (name == "linear_probe")
    else:
        assert args.k == [20] and not args.official_protocol


@pytest.mark.parametrize("dataset, epochs, views, save", [("k400", 100, (7, 3), 1), ("ssv2", 40, (2, 3), 100)])
def test_sigma_head_rows_are_the_official_recipe(dataset, epochs, views, save):
    """QUVA-Lab/SIGMA scripts_finetune HEAD: 8 GPUs x 4 = 32 videos, lr 1e-3, one clip per video."""
    import run_class_finetuning

    path = os.path.join(SCRIPTS, "finetune", f"finetune_sigma_head_vitb_{dataset}.sh")
    text = open(path).read()
    assert "QUVA-Lab/SIGMA scripts_finetune/finetune_" in text and re.search(r"commit\s[#\s]*[0-9a-f]{40}", text)
    args = run_class_finetuning.get_args(dry_run(path)[2])
    assert args.batch_size * args.accum_iter * 8 == 32 and args.batch_size == 4  # --update_freq sets accum_iter
    assert (args.lr, args.epochs, args.num_sample, args.warmup_lr) == (1e-3, epochs, 1, 1e-6)
    assert (args.test_num_segment, args.test_num_crop, args.save_ckpt_freq) == (*views, save)
    assert tuple(args.finetuning_crops) == (0.25, 1.0) and not args.crop_first


@pytest.mark.parametrize("path", LAUNCHERS, ids=rel)
def test_launcher_headers_cite_a_commit(path):
    header = "".join(line for line in open(path) if line.startswith("#"))
    if any(repo in header for repo in ("QUVA-Lab/SIGMA", "MCG-NJU/VideoMAE", "fmthoker/SEVERE-BENCHMARK",
                                       "facebookresearch/vjepa2")):
        assert re.search(r"commit\s[#\s]*[0-9a-f]{40}", header), f"{rel(path)} cites an official script, no commit"
    else:
        assert "Derived" in header or "no official" in header, f"{rel(path)} names no source"


# SEVERE rows: (data set, --data_path, --data_root, --examples, test views, epochs)
SEVERE_ROWS = {
    "domain_ssv2": ("SSV2", "/data/ssv2/annotations", "/data/ssv2", 0, (10, 1), 44),
    "domain_gym99": ("GYM99", "/data/finegym", "/data/finegym", 0, (10, 1), 80),
    "samples_ucf101_1000": ("UCF101", "/data/ucf101/annotations", "/data/ucf101", 1000, (10, 1), 80),
    "samples_gym99_1000": ("GYM99", "/data/finegym", "/data/finegym", 1000, (10, 1), 80),
    "granularity_fx_s1": ("FX-S1", "/data/finegym", "/data/finegym", 0, (10, 1), 90),
    "granularity_ub_s1": ("UB-S1", "/data/finegym", "/data/finegym", 0, (10, 1), 90),
    "task_ucfrep": ("UCFRep", "/data/ucfrep", "/data/ucf101", 0, (2, 3), 100),
    "task_charades": ("Charades", "/data/charades/annotations", "/data/charades", 0, (10, 3), 57),
}


def test_every_severe_row_has_a_launcher():
    assert sorted(os.path.basename(p)[:-3] for p in LAUNCHERS if "/severe/" in p) == sorted(SEVERE_ROWS)


@pytest.mark.parametrize("name", sorted(SEVERE_ROWS))
def test_severe_recipe_parses(name):
    import run_class_finetuning
    from evals.tasks import TASK_OF_DATA_SET

    data_set, data_path, data_root, examples, views, epochs = SEVERE_ROWS[name]
    _, driver, argv = dry_run(os.path.join(SCRIPTS, "severe", f"{name}.sh"))
    assert driver == run_class_finetuning.__file__
    args = run_class_finetuning.get_args(argv)
    assert (args.data_set, args.data_path, args.data_root, args.examples) == (data_set, data_path, data_root, examples)
    assert (args.test_num_segment, args.test_num_crop, args.epochs) == (*views, epochs)
    assert args.finetune == FAKE_ENV["PRETRAINED"] and args.run_name == f"severe_{name}"
    assert args.output_dir == f"/runs/severe_{name}/sigma_dino_vitb_k400-checkpoint-799"
    assert args.model == "vit_base_patch16_224" and args.num_frames == 16 and args.input_size == 224
    assert args.probe is None and not args.linear_probing  # SEVERE fine-tunes the whole network
    kind = TASK_OF_DATA_SET.get(data_set, "classification")
    if kind == "counting":
        assert args.nb_classes is None  # one count output, the data set's
    else:
        assert args.nb_classes == {"SSV2": 174, "GYM99": 99, "UCF101": 101, "FX-S1": 11, "UB-S1": 15,
                                   "Charades": 157}[data_set]
    if kind != "classification":  # single-label augmentations off for multi-label and counting
        assert (args.mixup, args.cutmix, args.smoothing) == (0, 0, 0)
    if data_set == "Charades":
        assert args.sampling_rate * args.num_frames == 256  # SEVERE's 32 x 8 frame span
    text = open(os.path.join(SCRIPTS, "severe", f"{name}.sh")).read()
    global_batch = int(text.split("GLOBAL_BATCH=${GLOBAL_BATCH:-")[1].split("}")[0])
    assert args.batch_size * args.accum_iter * 8 == global_batch


def test_ucfrep_needs_its_videos():
    env = {k: v for k, v in FAKE_ENV.items() if k != "UCF101_ROOT"}
    out = run_launcher(os.path.join(SCRIPTS, "severe", "task_ucfrep.sh"), env)
    assert out.returncode == 2 and "UCFREP_VIDEOS is not set" in out.stderr and out.stdout == ""
    import run_class_finetuning

    args = run_class_finetuning.get_args(dry_run(os.path.join(SCRIPTS, "severe", "task_ucfrep.sh"),
                                                 {**env, "UCFREP_VIDEOS": "/data/UCF-101"})[2])
    assert args.data_root == "/data/UCF-101"


@pytest.mark.parametrize("dataset, data_set, views", [
    ("ssv2", "SSV2", (2, 3)), ("k400", "Kinetics-400", (5, 3)), ("imagenet", "ImageNet", (1, 1)),
    ("cifar100", "CIFAR-100", (1, 1))])
def test_attentive_probe_launcher(dataset, data_set, views):
    import run_class_finetuning

    _, _, argv = dry_run(os.path.join(SCRIPTS, "eval", "attentive_probe.sh"), {**FAKE_ENV, "DATASET": dataset})
    args = run_class_finetuning.get_args(argv)
    assert args.probe == "attentive" and args.data_set == data_set
    # V-JEPA 2's grid: 5 lrs x 4 weight decays, 20 epochs, 256 clips per step, no warmup, cosine to 0.
    assert sorted(l * args.lr for l in args.probe_lr_scales) == pytest.approx([1e-4, 3e-4, 1e-3, 3e-3, 5e-3])
    assert args.probe_weight_decays == [0.01, 0.1, 0.4, 0.8] and (args.probe_depth, args.probe_num_heads) == (4, 16)
    assert (args.epochs, args.warmup_epochs, args.min_lr) == (20, 0, 0)
    assert args.batch_size * args.accum_iter * 8 == 256 and args.num_sample == 1
    assert (args.test_num_segment, args.test_num_crop) == views
    assert args.output_dir == f"/runs/attentive_probe_{dataset}/sigma_dino_vitb_k400-checkpoint-799"
    if views == (1, 1):  # images: root folder as data path, 256 -> 224 centre crop
        root = FAKE_ENV[{"imagenet": "IMAGENET_ROOT", "cifar100": "CIFAR100_ROOT"}[dataset]]
        assert args.data_path == args.data_root == root
        assert args.short_side_size == 256 and tuple(args.finetuning_crops) == (0.08, 1.0)


@pytest.mark.parametrize("dataset, data_set, nb_classes", [("imagenet", "ImageNet", 1000),
                                                           ("cifar100", "CIFAR-100", 100)])
def test_image_linear_probe_launcher(dataset, data_set, nb_classes):
    import run_class_finetuning

    _, _, argv = dry_run(os.path.join(SCRIPTS, "eval", "image_linear_probe.sh"), {**FAKE_ENV, "DATASET": dataset})
    args = run_class_finetuning.get_args(argv)
    assert args.linear_probing and (args.data_set, args.nb_classes) == (data_set, nb_classes)
    assert (args.num_frames, args.input_size, args.short_side_size) == (16, 224, 256)
    assert (args.test_num_segment, args.test_num_crop, args.lr, args.epochs) == (1, 1, 1e-3, 30)
    assert args.batch_size * args.accum_iter * 8 == 384


def test_image_linear_probe_refuses_a_video_set():
    out = run_launcher(os.path.join(SCRIPTS, "eval", "image_linear_probe.sh"), {**FAKE_ENV, "DATASET": "k400"})
    assert out.returncode == 2 and "DATASET must be imagenet or cifar100" in out.stderr


def test_knn_official_switch():
    import evals.knn

    _, _, argv = dry_run(os.path.join(SCRIPTS, "eval", "knn.sh"), {**FAKE_ENV, "OFFICIAL": "1"})
    args = evals.knn.get_args(argv)
    assert args.official_protocol and args.k == [200] and (args.test_num_segment, args.test_num_crop) == (2, 3)
    assert args.output_dir == "/runs/knn_official_k400/sigma_dino_vitb_k400-checkpoint-799"


def test_slurm_layout_and_overrides():
    env = {**FAKE_ENV, "SIGMA_LAUNCHER": "srun", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "16",
           "EXTRA_ARGS": "--epochs 3\n--warmup_epochs 1\n--lr 1e-4", "BATCH_SIZE": "16"}
    launcher, _, argv = dry_run(os.path.join(SCRIPTS, "pretrain", "sigma_dino_vitb_ssv2.sh"), env, ["--seed", "5"])
    assert launcher[0] == "srun" and launcher[-1] == "-u"
    import run_sigma_pretraining

    args = run_sigma_pretraining.get_args(argv)
    assert (args.epochs, args.lr, args.seed) == (3, 1e-4, 5)  # EXTRA_ARGS, then the script's arguments win
    assert args.batch_size * args.accum_iter * 16 == 512


@pytest.mark.parametrize("missing, message", [
    ("SSV2_ROOT", "SSV2_ROOT is not set"), ("OUTPUT_ROOT", "OUTPUT_ROOT is not set"),
    ("DINO_WEIGHTS", "DINO_WEIGHTS is not set")])
def test_missing_path_stops_with_its_name(missing, message):
    env = {k: v for k, v in FAKE_ENV.items() if k != missing}
    out = run_launcher(os.path.join(SCRIPTS, "pretrain", "sigma_dino_vitb_ssv2.sh"), env)
    assert out.returncode == 2 and message in out.stderr and out.stdout == ""


def test_indivisible_global_batch_is_refused():
    out = run_launcher(os.path.join(SCRIPTS, "pretrain", "sigma_dino_vitb_ssv2.sh"), {**FAKE_ENV, "NPROC_PER_NODE": "3"})
    assert out.returncode == 2 and "global batch 512 is not a multiple of BATCH_SIZE 32 x 3" in out.stderr


def test_srun_outside_slurm_is_refused():
    out = run_launcher(os.path.join(SCRIPTS, "finetune", "finetune_vitb_k400.sh"), {**FAKE_ENV, "SIGMA_LAUNCHER": "srun"})
    assert out.returncode == 2 and "submit the .sbatch file" in out.stderr


@pytest.mark.e2e
def test_torchrun_launcher_runs_on_cpu(tmp_path, synthetic_dataset):
    """The single-node torchrun path end to end: 2 gloo processes, reduced recipe."""
    env = {"K400_ROOT": synthetic_dataset, "K400_ANNOTATIONS": synthetic_dataset, "OUTPUT_ROOT": str(tmp_path),
           "SIGMA_DEVICE": "cpu", "NPROC_PER_NODE": "2", "BATCH_SIZE": "2", "GLOBAL_BATCH": "4",
           "EXTRA_ARGS": "--input_size 32 --num_frames 4 --sampling_rate 2 --epochs 1 --warmup_epochs 0 "
                         "--num_prototypes 32 --num_workers 0"}
    out = run_launcher(os.path.join(SCRIPTS, "pretrain", "sigma_mlp_vits_k400.sh"), env)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "sigma_mlp_vits_k400"
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["accum_iter"] == 1 and config["target_type"] == "mlp"
    assert (run / "checkpoint-0.pth").is_file() and len((run / "log.txt").read_text().splitlines()) == 1


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("videos")
    subprocess.run([sys.executable, "-m", "datasets.synthetic", "--out", str(out), "--num_train", "8",
                    "--num_val", "2", "--num_test", "2", "--frames", "16"], cwd=ROOT, check=True, capture_output=True)
    return str(out)


# ---- collect_results.py on fake run folders --------------------------------------------------------

def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def pretraining_run(root, name, target_type, loss_func, model, epochs_logged):
    write(root / name / "config.json", {"target_type": target_type, "loss_func": loss_func, "model": model,
                                        "epochs": 800})
    write(root / name / "log.txt", "".join(json.dumps({"epoch": e, "train_loss": 1.0}) + "\n"
                                           for e in range(epochs_logged)))
    return root / name


def finetune_run(root, name, checkpoint, data_set="SSV2", model="vit_base_patch16_224", test=None, val=(),
                 linear=False, segments=2):
    write(root / name / "config.json", {"model": model, "data_set": data_set, "finetune": str(checkpoint),
                                        "num_frames": 16, "test_num_segment": segments, "test_num_crop": 3,
                                        "linear_probing": linear})
    write(root / name / "log.txt", "".join(json.dumps({"epoch": i, "val_acc1": a, "val_acc5": a + 20}) + "\n"
                                           for i, a in enumerate(val)))
    if test is not None:
        write(root / name / "test_results.json", {"top1": test, "top5": 90.0, "mean_class_acc": 60.0,
                                                  "num_videos": 10, "views": f"{segments}x3"})


def tables(text):
    """{table number: rows as dicts} of collect_results' markdown ("## I. ..." then a table)."""
    out = {}
    for section in text.split("## ")[1:]:
        title, _, table = section.partition("\n\n")
        lines = table.strip().splitlines()
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        assert lines[1].startswith("|---")
        out[title.split(".")[0]] = [dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
                                    for line in lines[2:]]
    return out


def table_rows(text, table="I"):
    return tables(text)[table]


def test_collect_results_table(tmp_path, capsys):
    dino = pretraining_run(tmp_path, "sigma_dino_vitb_ssv2", "dino_v1", "SWAV", "pretrain_videomae_base_patch16_224", 800)
    mae = pretraining_run(tmp_path, "videomae_vitb_ssv2", "pixel", "L2", "pretrain_videomae_base_patch16_224", 800)
    mlp = pretraining_run(tmp_path, "sigma_mlp_vits_k400", "mlp", "SWAV", "pretrain_videomae_small_patch16_224", 57)
    ft = tmp_path / "finetune"
    finetune_run(ft, "a", dino / "checkpoint-799.pth", test=70.9, val=[60.0, 69.0])
    finetune_run(ft, "b", mae / "checkpoint-399.pth", test=69.6)
    finetune_run(ft, "c", mlp / "checkpoint-latest.pth", data_set="Kinetics-400", model="vit_small_patch16_224",
                 val=[10.0, 35.5, 30.0], segments=5)  # still running: best validation top-1
    finetune_run(ft, "d", "/downloads/official_k400_vitb.pth", data_set="UCF101", test=90.1, segments=5)
    finetune_run(ft, "e", mlp / "checkpoint-56.pth", data_set="Kinetics-400", model="vit_small_patch16_224",
                 test=30.7, linear=True, segments=5)
    write(tmp_path / "knn" / "knn_results.json", {"top1": 12.5, "top5": 40.0, "checkpoint": str(mae / "checkpoint-799.pth"),
                                                  "per_k": {"20": {"top1": 12.5, "top5": 40.0}}})
    write(tmp_path / "broken" / "test_results.json", "{not json")
    rows = table_rows(collect_results.main([str(tmp_path)]))
    by_run = {os.path.basename(r["Run"]): r for r in rows}
    assert set(by_run) == {"a", "b", "c", "d", "e", "knn", "broken"}
    assert {k: by_run["a"][k] for k in ("Method", "Extra data", "Backbone", "Data", "Protocol",
                                        "Frames x clips x crops", "Epochs", "Top-1", "Pretraining run")} == {
        "Method": "SIGMA-DINO", "Extra data": "IN-1k", "Backbone": "ViT-B", "Data": "SSv2", "Protocol": "fine-tune",
        "Frames x clips x crops": "16x2x3", "Epochs": "800", "Top-1": "70.9", "Pretraining run": "sigma_dino_vitb_ssv2"}
    assert (by_run["b"]["Method"], by_run["b"]["Extra data"], by_run["b"]["Epochs"]) == ("VideoMAE", "no", "400")
    assert (by_run["c"]["Method"], by_run["c"]["Backbone"], by_run["c"]["Data"]) == ("SIGMA-MLP", "ViT-S", "K400")
    assert (by_run["c"]["Epochs"], by_run["c"]["Top-1"], by_run["c"]["Frames x clips x crops"]) == ("57", "35.5 (val)", "16x1x1")
    assert (by_run["d"]["Method"], by_run["d"]["Epochs"], by_run["d"]["Top-1"]) == ("unknown", "?", "90.1")
    assert (by_run["e"]["Protocol"], by_run["e"]["Epochs"], by_run["e"]["Top-1"]) == ("linear", "57", "30.7")
    assert (by_run["knn"]["Protocol"], by_run["knn"]["Method"], by_run["knn"]["Backbone"], by_run["knn"]["Top-1"]) == (
        "kNN", "VideoMAE", "ViT-B", "12.5")
    assert by_run["broken"]["Top-1"] == "-" and "unreadable" in capsys.readouterr().err
    # One run folder given directly; a folder without runs is an error.
    assert [r["Run"] for r in table_rows(collect_results.main([str(ft / "b")]))] == [str(ft / "b")]
    with pytest.raises(SystemExit, match="no evaluation runs"):
        collect_results.main([str(dino)])


def test_collect_results_eval_runs(tmp_path):
    """--eval runs test fine-tuned weights: with or without a config.json they are not "random init"."""
    mlp = pretraining_run(tmp_path, "sigma_mlp_vits_k400", "mlp", "SWAV", "pretrain_videomae_small_patch16_224", 57)
    ft = tmp_path / "finetune"
    finetune_run(ft, "trained", mlp / "checkpoint-56.pth", data_set="Kinetics-400", model="vit_small_patch16_224",
                 val=[30.0], linear=True, segments=5)
    finetune_run(ft, "scratch", "", data_set="Kinetics-400", model="vit_small_patch16_224", test=20.0, segments=5)
    weights = ft / "trained" / "checkpoint-best.pth"
    results = {"top1": 31.5, "top5": 80.0, "mean_class_acc": 30.0, "num_videos": 10, "views": "5x3"}
    # An --eval run of today: test_results.json, predictions.csv and train.log, no config.json.
    write(tmp_path / "eval_log" / "test_results.json", results)
    write(tmp_path / "eval_log" / "train.log",
          "2026-12-01 10:00:00,000 INFO sigma: single environment (no launcher variables) -> rank 0 of 1\n"
          f"2026-12-01 10:00:01,000 INFO weights: loaded 152 tensors from {weights}; "
          "newly initialised: []; dropped from checkpoint: []\n")
    # An --eval --resume run that did not log what it loaded: unknown, not random init.
    write(tmp_path / "eval_bare" / "test_results.json", results)
    # --eval runs that write config.json ("eval": true), by --resume and by --finetune.
    for name, flags in (("eval_resume", {"resume": str(weights), "finetune": ""}),
                        ("eval_finetune", {"resume": "", "finetune": str(weights)})):
        write(tmp_path / name / "config.json", {"model": "vit_small_patch16_224", "data_set": "Kinetics-400",
                                                "num_frames": 16, "test_num_segment": 5, "test_num_crop": 3,
                                                "linear_probing": False, "eval": True, **flags})
        write(tmp_path / name / "test_results.json", results)
    by_run = {os.path.basename(r["Run"]): r for r in table_rows(collect_results.main([str(tmp_path)]))}
    assert set(by_run) == {"trained", "scratch", "eval_log", "eval_bare", "eval_resume", "eval_finetune"}
    assert (by_run["scratch"]["Method"], by_run["scratch"]["Protocol"]) == ("random init", "fine-tune")
    for name in ("eval_log", "eval_resume", "eval_finetune"):
        r = by_run[name]
        assert {k: r[k] for k in ("Method", "Epochs", "Pretraining run", "Protocol", "Backbone", "Top-1")} == {
            "Method": "SIGMA-MLP", "Epochs": "57", "Pretraining run": "sigma_mlp_vits_k400",
            "Protocol": "linear (eval)", "Backbone": "ViT-S", "Top-1": "31.5"}, name
    assert (by_run["eval_resume"]["Data"], by_run["eval_resume"]["Frames x clips x crops"]) == ("K400", "16x5x3")
    assert (by_run["eval_log"]["Data"], by_run["eval_log"]["Frames x clips x crops"]) == ("?", "?x5x3")
    assert (by_run["eval_bare"]["Method"], by_run["eval_bare"]["Protocol"], by_run["eval_bare"]["Top-1"]) == (
        "unknown", "eval", "31.5")


def task_run(root, name, checkpoint, data_set, results=None, val=(), **config):
    """A run_class_finetuning.py folder of a SEVERE task, a SEVERE launcher or an attentive probe."""
    write(root / name / "config.json", {"model": "vit_base_patch16_224", "data_set": data_set,
                                        "finetune": str(checkpoint), "num_frames": 16, "test_num_segment": 10,
                                        "test_num_crop": 1, "linear_probing": False, **config})
    write(root / name / "log.txt", "".join(json.dumps({"epoch": i, **r}) + "\n" for i, r in enumerate(val)))
    if results is not None:
        write(root / name / "test_results.json", results)


def test_collect_results_every_benchmark(tmp_path):
    """Tables I (attentive probe, image probes, kNN, evals.probe), II (segmentation) and III (SEVERE)."""
    dino = pretraining_run(tmp_path, "sigma_dino_vitb_k400", "dino_v1", "SWAV", "pretrain_videomae_base_patch16_224",
                           800)
    ckpt = dino / "checkpoint-799.pth"
    ev = tmp_path / "eval"
    per_head = [{"acc1": 40.0, "acc5": 70.0}, {"acc1": 52.5, "acc5": 80.0}, {"acc1": 51.0, "acc5": 79.0}]
    task_run(ev, "attentive", ckpt, "SSV2", {"task": "classification", "acc1": 52.5, "acc5": 80.0, "head": 1,
                                              "per_head": per_head, "views": "2x3"}, probe="attentive",
             test_num_segment=2, test_num_crop=3)
    task_run(ev, "in1k_linear", ckpt, "ImageNet", {"top1": 45.0, "top5": 70.0, "views": "1x1"}, linear_probing=True,
             test_num_segment=1)
    write(ev / "cifar_knn" / "knn_results.json", {"top1": 60.25, "top5": 85.0, "checkpoint": str(ckpt)})
    write(ev / "cifar_knn" / "config.json", {"model": "vit_base_patch16_224", "data_set": "CIFAR-100",
                                             "num_frames": 16, "finetune": str(ckpt)})
    write(ev / "probe" / "probe_results.json", {"checkpoint": str(ckpt), "labellings": {
        "digit": {"probe": {"top1": 91.0}, "knn": {"20": 80.0}}, "direction": {"probe": {"top1": 55.5}, "knn": {}}}})
    write(ev / "probe" / "config.json", {"model": "vit_small_patch16_224", "data_set": "custom", "num_frames": 8,
                                         "finetune": str(ckpt)})
    write(ev / "davis" / "segmentation_results.json", {
        "data_set": "davis", "num_frames": 16, "checkpoint": str(ckpt), "clustering": {"miou": 41.23, "num_clips": 30},
        "overclustering": {"miou": 60.0, "num_clips": 30}})
    write(ev / "davis" / "config.json", {"model": "vit_small_patch16_224", "data_set": "davis", "finetune": str(ckpt),
                                         "overclustering_k": 10})
    write(ev / "ytvos_running" / "config.json", {"model": "vit_base_patch16_224", "data_set": "ytvos",
                                                 "finetune": str(ckpt), "overclustering_k": 10, "num_frames": 4})
    sv = tmp_path / "severe"
    task_run(sv, "ssv2", ckpt, "SSV2", {"top1": 61.0, "top5": 88.0}, run_name="severe_domain_ssv2")
    task_run(sv, "ucf1000", ckpt, "UCF101", {"top1": 80.1, "top5": 95.0}, examples=1000)
    task_run(sv, "fx", ckpt, "FX-S1", val=[{"val_acc1": 70.0, "val_acc5": 99.0}, {"val_acc1": 75.5, "val_acc5": 99.0}])
    task_run(sv, "charades", ckpt, "Charades", {"task": "multilabel", "mAP": 25.04, "head": 0}, task="multilabel")
    task_run(sv, "ucfrep", ckpt, "UCFRep", {"task": "counting", "mae": 0.2169, "obo": 0.5123, "head": 0},
             task="counting")
    task_run(sv, "ucfrep_running", ckpt, "UCFRep", task="counting", val=[
        {"val_mae": 0.4, "val_obo": 0.3}, {"val_mae": 0.25, "val_obo": 0.5}, {"val_mae": 0.3, "val_obo": 0.45}])
    text = collect_results.main([str(tmp_path)])
    assert [line for line in text.splitlines() if line.startswith("## ")] == [
        "## I. Classification: fine-tuning, linear / attentive probes, kNN",
        "## II. Unsupervised video object segmentation (mIoU, %)", "## III. SEVERE (MAE: lower is better)"]
    got = tables(text)
    one = {os.path.basename(r["Run"]) + r["Data"]: r for r in got["I"]}
    assert set(one) == {"attentiveSSv2", "in1k_linearIN-1K", "cifar_knnCIFAR-100", "probecustom (digit)",
                        "probecustom (direction)"}
    att = one["attentiveSSv2"]
    assert (att["Protocol"], att["Top-1"], att["Top-5"], att["Frames x clips x crops"]) == (
        "attentive (head 1 of 3)", "52.5", "80.0", "16x2x3")
    assert (att["Method"], att["Epochs"], att["Backbone"]) == ("SIGMA-DINO", "800", "ViT-B")
    assert (one["in1k_linearIN-1K"]["Protocol"], one["in1k_linearIN-1K"]["Top-1"]) == ("linear", "45.0")
    assert (one["cifar_knnCIFAR-100"]["Protocol"], one["cifar_knnCIFAR-100"]["Top-1"]) == ("kNN", "60.2")
    assert [one[f"probecustom ({n})"]["Top-1"] for n in ("digit", "direction")] == ["91.0", "55.5"]
    assert one["probecustom (digit)"]["Protocol"] == "logistic regression"
    two = {os.path.basename(r["Run"]): r for r in got["II"]}
    assert {k: two["davis"][k] for k in ("Data", "Backbone", "Frames", "Clustering mIoU", "Overclustering mIoU",
                                         "Clips", "Method")} == {
        "Data": "DAVIS-2017", "Backbone": "ViT-S", "Frames": "16", "Clustering mIoU": "41.2",
        "Overclustering mIoU": "60.0", "Clips": "30", "Method": "SIGMA-DINO"}
    assert (two["ytvos_running"]["Data"], two["ytvos_running"]["Clustering mIoU"]) == ("YTVOS", "-")
    three = {os.path.basename(r["Run"]): r for r in got["III"]}
    assert [os.path.basename(r["Run"]) for r in got["III"]] == [  # domain, sample size, granularity, task
        "ssv2", "ucf1000", "fx", "charades", "ucfrep", "ucfrep_running"]
    assert {k: (r["Shift"], r["Data"], r["Metric"], r["Score"]) for k, r in three.items()} == {
        "ssv2": ("domain", "SSv2", "top-1", "61.0"), "ucf1000": ("sample size", "UCF101 (1000)", "top-1", "80.1"),
        "fx": ("granularity", "FX-S1", "top-1", "75.5 (val)"), "charades": ("task", "Charades", "mAP", "25.0"),
        "ucfrep": ("task", "UCFRep", "MAE / OBO", "0.217 / 0.512"),
        "ucfrep_running": ("task", "UCFRep", "MAE / OBO", "0.250 / 0.500 (val)")}  # the lowest MAE
    assert three["ssv2"]["Frames x clips x crops"] == "16x10x1" and three["charades"]["Method"] == "SIGMA-DINO"


def test_collect_results_reads_a_real_attentive_result(tmp_path):
    """The keys evals.tasks.write_task_results writes are the ones collect_results reads."""
    from evals.tasks import Task, write_task_results
    from engine_for_finetuning import Videos
    import torch

    task = Task("multilabel")
    videos = Videos(torch.arange(2), torch.zeros(2).long(), torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.ones(2))
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    metrics = {**task.metrics(videos, targets)[0], "head": 0}
    out = tmp_path / "charades"
    out.mkdir()
    samples = [types.SimpleNamespace(path=f"v{i}.mp4") for i in range(2)]
    write_task_results(str(out), "", task, metrics, [metrics], videos, samples, targets, "10x3")
    write(out / "config.json", {"model": "vit_base_patch16_224", "data_set": "Charades", "finetune": "",
                                "num_frames": 16, "test_num_segment": 10, "test_num_crop": 3, "task": "multilabel"})
    [r] = tables(collect_results.main([str(out)]))["III"]
    assert (r["Metric"], r["Score"], r["Method"], r["Frames x clips x crops"]) == (
        "mAP", "100.0", "random init", "16x10x3")


def test_collect_results_names_the_source_of_a_hugging_face_folder(tmp_path):
    """A fine-tune of an `hf_weights.py export` folder follows the export back to its pretraining run,
    or, with that run gone, reads what the export recorded; a folder of someone else's is named."""
    import torch
    import hf_weights
    import modeling_pretrain

    run = pretraining_run(tmp_path, "sigma_mlp_vitt", "mlp", "SWAV", "pretrain_videomae_tiny_patch16_224", 10)
    model = modeling_pretrain.MODELS["pretrain_videomae_tiny_patch16_224"](
        img_size=32, all_frames=4, decoder_depth=1, target_type="mlp", loss_func="SWAV", num_prototypes=8)
    config = {"model": "pretrain_videomae_tiny_patch16_224", "target_type": "mlp", "loss_func": "SWAV",
              "input_size": 32, "num_frames": 4}
    torch.save({"model": model.state_dict(), "config": config, "epoch": 10, "step": 20}, run / "checkpoint-9.pth")
    hf_weights.export_hf(str(run / "checkpoint-9.pth"), str(tmp_path / "hf" / "sigma_vitt_hf"))
    write(tmp_path / "hf" / "mcg_videomae" / "config.json", {"model_type": "videomae",
                                                            "architectures": ["VideoMAEForPreTraining"]})
    ft = tmp_path / "finetune"
    finetune_run(ft, "from_export", tmp_path / "hf" / "sigma_vitt_hf", data_set="UCF101",
                 model="vit_tiny_patch16_224", test=55.0)
    finetune_run(ft, "from_hub", tmp_path / "hf" / "mcg_videomae", data_set="UCF101", test=60.0)
    rows = {os.path.basename(r["Run"]): r for r in table_rows(collect_results.main([str(ft)]))}
    keys = ("Method", "Extra data", "Epochs", "Pretraining run")
    assert {k: rows["from_export"][k] for k in keys} == {
        "Method": "SIGMA-MLP", "Extra data": "no", "Epochs": "10", "Pretraining run": "sigma_mlp_vitt"}
    assert {k: rows["from_hub"][k] for k in keys} == {
        "Method": "VideoMAE", "Extra data": "no", "Epochs": "?", "Pretraining run": "HF mcg_videomae"}
    shutil.rmtree(run)  # the export alone: what it recorded
    rows = {os.path.basename(r["Run"]): r for r in table_rows(collect_results.main([str(ft)]))}
    assert {k: rows["from_export"][k] for k in keys} == {
        "Method": "SIGMA-MLP", "Extra data": "no", "Epochs": "10", "Pretraining run": "HF sigma_vitt_hf"}


def test_collect_results_marks_failed_runs(tmp_path, capsys):
    mlp = pretraining_run(tmp_path, "sigma_mlp_vits_k400", "mlp", "SWAV", "pretrain_videomae_small_patch16_224", 57)
    # A failed --eval: config.json written, no test_results.json, train.log ending with the cause.
    write(tmp_path / "eval_failed" / "config.json", {"model": "vit_small_patch16_224", "data_set": "Kinetics-400",
                                                     "finetune": str(mlp / "checkpoint-56.pth"), "eval": True,
                                                     "num_frames": 16, "test_num_segment": 5, "test_num_crop": 3})
    write(tmp_path / "eval_failed" / "train.log",
          "2026-12-01 10:00:00,000 INFO sigma: single environment (no launcher variables) -> rank 0 of 1\n"
          "2026-12-01 10:00:02,000 ERROR sigma: run failed: val.csv: no samples\n")
    # A fine-tune that failed after two epochs: its best validation, marked; one still running: unmarked.
    finetune_run(tmp_path, "ft_failed", mlp / "checkpoint-56.pth", data_set="Kinetics-400", val=[20.0, 30.0])
    write(tmp_path / "ft_failed" / "train.log", "x INFO sigma: epoch 1\ny ERROR sigma: run failed: disk full\n")
    finetune_run(tmp_path, "ft_running", mlp / "checkpoint-56.pth", data_set="Kinetics-400", val=[20.0])
    write(tmp_path / "ft_running" / "train.log", "x ERROR sigma: run failed: old cause\ny INFO sigma: resumed\n")
    rows = {os.path.basename(r["Run"]): r for r in table_rows(collect_results.main([str(tmp_path)]))}
    assert (rows["eval_failed"]["Top-1"], rows["eval_failed"]["Method"]) == ("failed", "SIGMA-MLP")
    assert rows["ft_failed"]["Top-1"] == "30.0 (val, failed)" and rows["ft_running"]["Top-1"] == "20.0 (val)"
    err = capsys.readouterr().err
    assert "eval_failed failed: run failed: val.csv: no samples" in err and "ft_running" not in err


@pytest.mark.parametrize("dataset, data_set", [("imagenet", "ImageNet"), ("cifar100", "CIFAR-100")])
def test_knn_launcher_on_images(dataset, data_set):
    """scripts/eval/knn.sh on the image sets of Table I (sigma_dataset knows their roots)."""
    import evals.knn

    args = evals.knn.get_args(dry_run(os.path.join(SCRIPTS, "eval", "knn.sh"), {**FAKE_ENV, "DATASET": dataset})[2])
    root = FAKE_ENV[{"imagenet": "IMAGENET_ROOT", "cifar100": "CIFAR100_ROOT"}[dataset]]
    assert (args.data_set, args.data_path, args.data_root, args.sampling_rate) == (data_set, root, root, 1)
