"""Fine-tuning, multi-view testing, linear probing, kNN and DeepSpeed end to end on generated videos."""
import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import evals.knn
import run_class_finetuning as ft
import run_sigma_pretraining as pretrain
from datasets.synthetic import make_dataset

pytestmark = pytest.mark.e2e  # runs the drivers end to end (pytest.ini)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = os.path.join(os.path.dirname(__file__), "data", "checkpoint_keys.txt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_dataset(str(root), num_train=8, num_val=4, num_test=4, frames=16, height=48, width=64, seed=0)
    return str(root)


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    """A checkpoint written by our pretraining driver (ViT-S SIGMA-MLP, one epoch)."""
    out = tmp_path_factory.mktemp("pretrain")
    pretrain.main(pretrain.get_args([
        "--data_path", data, "--data_path_csv", os.path.join(data, "pretrain.csv"), "--input_size", "32",
        "--num_frames", "4", "--sampling_rate", "2", "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0",
        "--num_prototypes", "16", "--decoder_depth", "1", "--num_workers", "0", "--output_dir", str(out)]))
    return str(out / "checkpoint-0.pth")


def _argv(data, out, *extra):
    return ["--model", "vit_small_patch16_224", "--data_set", "custom", "--nb_classes", "4", "--data_path", data,
            "--input_size", "32", "--short_side_size", "32", "--num_frames", "4", "--sampling_rate", "2",
            "--batch_size", "2", "--num_sample", "2", "--epochs", "2", "--warmup_epochs", "1", "--num_workers", "0",
            "--log_every", "1", "--save_ckpt_freq", "1", "--test_num_segment", "1", "--test_num_crop", "1",
            "--output_dir", str(out), *extra]


def _losses(out):
    steps = {}
    for line in open(os.path.join(out, "metrics.jsonl")):
        record = json.loads(line)
        steps[record["step"]] = record["loss"]
    return steps


def _predictions(out, name=""):
    with open(os.path.join(out, f"predictions{name}.csv")) as f:
        return list(csv.DictReader(f))


def _torchrun(script, argv, nproc=2, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *(["-m", script] if not script.endswith(".py") else [os.path.join(ROOT, script)]), *argv]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def _official_sigma_mlp_checkpoint(path):
    """A random checkpoint laid out exactly as the published SIGMA-MLP ViT-S one (names and shapes
    from checkpoint_keys.txt, the 12 encoder / 4 decoder blocks expanded from blocks.0)."""
    section, state = None, {}
    for line in open(KEYS):
        if line.startswith("## "):
            section = line[3:]
        elif section and section.startswith("pretrain ViT-S, SIGMA-MLP") and "\t" in line:
            name, shape = line.rstrip("\n").split("\t")
            shape = tuple(int(d) for d in re.findall(r"\d+", shape))
            depth = 12 if name.startswith("encoder.") else 4
            for i in range(depth if "blocks.0." in name else 1):
                state[name.replace("blocks.0.", f"blocks.{i}.")] = torch.randn(shape) * 0.02
    torch.save({"model": state}, path)
    return state


def test_finetune_from_our_pretraining_with_ema(data, pretrained, tmp_path):
    ft.main(ft.get_args(_argv(data, tmp_path, "--finetune", pretrained, "--model_ema", "--model_ema_decay", "0.5",
                              "--test_num_segment", "2", "--test_num_crop", "3")))
    epochs = [json.loads(line) for line in open(tmp_path / "log.txt")]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert {"train_loss", "val_acc1", "val_acc5", "val_mean_class_acc", "val_ema_acc1", "bad_samples"} <= set(epochs[0])
    assert sorted(_losses(tmp_path)) == list(range(1, 9))  # 8 videos / 2 per step x 2 epochs
    result = json.loads((tmp_path / "test_results.json").read_text())
    assert result["views"] == "2x3" and result["num_videos"] == 4 and result["missing_videos"] == 0
    assert 0 <= result["top1"] <= result["top5"] <= 100
    rows = _predictions(tmp_path)
    assert [int(r["index"]) for r in rows] == [0, 1, 2, 3] and {r["num_views"] for r in rows} == {"6"}
    assert (tmp_path / "test_results_ema.json").exists() and (tmp_path / "checkpoint-best.pth").exists()
    state = torch.load(tmp_path / "checkpoint-latest.pth", map_location="cpu", weights_only=True)
    assert state["step"] == 8 and "model_ema" in state and "head.weight" in state["model"]
    log = (tmp_path / "train.log").read_text()
    assert "newly initialised: ['fc_norm.bias', 'fc_norm.weight', 'head.bias', 'head.weight']" in log
    assert "dropped from checkpoint: decoder.*" in log
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["global_batch"] == 2 and config["nb_classes"] == 4 and config["finetune"] == pretrained


def test_finetune_from_official_format_checkpoint_at_other_frames(data, tmp_path):
    path = str(tmp_path / "sigma_official.pth")
    state = _official_sigma_mlp_checkpoint(path)
    args = ft.get_args(_argv(data, tmp_path / "run", "--finetune", path, "--epochs", "1",
                             "--disable_eval_during_finetuning"))
    model, report = ft.build_model(args, 4)  # 4 frames of 32x32; the checkpoint was for 16 x 224
    assert report["initialised"] == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert "prototypes" in report["dropped"] and "encoder.norm.weight" not in report["loaded"]
    own = model.state_dict()
    for key in ("blocks.11.mlp.fc2.weight", "patch_embed.proj.weight", "blocks.0.attn.q_bias"):
        assert torch.equal(own[key], state["encoder." + key])
    ft.main(args)
    assert json.loads((tmp_path / "run" / "test_results.json").read_text())["num_videos"] == 4
    epoch = json.loads((tmp_path / "run" / "log.txt").read_text())
    assert "train_loss" in epoch and "val_acc1" not in epoch  # no per-epoch validation
    assert not (tmp_path / "run" / "checkpoint-best.pth").exists()


def test_resume_continues_exactly(data, pretrained, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    ft.main(ft.get_args(_argv(data, full, "--finetune", pretrained, "--model_ema")))
    resumed.mkdir()
    shutil.copy(full / "checkpoint-0.pth", resumed / "checkpoint-0.pth")
    ft.main(ft.get_args(_argv(data, resumed, "--finetune", pretrained, "--model_ema")))
    assert "resumed from" in (resumed / "train.log").read_text()
    a, b = _losses(full), _losses(resumed)
    assert sorted(b) == [5, 6, 7, 8]  # epoch 1 only; mixup draws restored with the RNG state
    assert all(a[s] == b[s] for s in b)
    last_a = torch.load(full / "checkpoint-latest.pth", map_location="cpu", weights_only=True)
    last_b = torch.load(resumed / "checkpoint-latest.pth", map_location="cpu", weights_only=True)
    for key in ("model", "model_ema"):
        assert all(torch.equal(last_a[key][k], last_b[key][k]) for k in last_a[key])


@pytest.fixture(scope="module")
def finetuned(data, pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetuned")
    ft.main(ft.get_args(_argv(data, out, "--finetune", pretrained, "--epochs", "1", "--warmup_epochs", "0")))
    return str(out / "checkpoint-0.pth")


@pytest.mark.parametrize("segments,crops", [(1, 1), (2, 3), (5, 3)])
def test_multiview_test_is_the_same_in_one_and_two_processes(data, finetuned, tmp_path, segments, crops):
    views = ["--test_num_segment", str(segments), "--test_num_crop", str(crops), "--eval", "--finetune", finetuned]
    ft.main(ft.get_args(_argv(data, tmp_path / "one", *views)))
    _torchrun("run_class_finetuning.py", _argv(data, tmp_path / "two", *views, "--device", "cpu"))
    runs = [tmp_path / "one", tmp_path / "two"]
    if segments == 2:  # also without --dist_eval: every process tests everything
        _torchrun("run_class_finetuning.py", _argv(data, tmp_path / "all", *views, "--dist_eval", "false",
                                                   "--device", "cpu"))
        runs.append(tmp_path / "all")
    reference = _predictions(runs[0])
    assert len(reference) == 4 and {r["num_views"] for r in reference} == {str(segments * crops)}
    for run in runs[1:]:
        rows = _predictions(run)
        for a, b in zip(reference, rows, strict=True):
            assert {k: a[k] for k in a if k != "prob"} == {k: b[k] for k in b if k != "prob"}
            assert float(a["prob"]) == pytest.approx(float(b["prob"]), abs=1e-5)
        result, ref = (json.loads((r / "test_results.json").read_text()) for r in (run, runs[0]))
        assert {k: v for k, v in result.items() if k != "views"} == pytest.approx(
            {k: v for k, v in ref.items() if k != "views"}, abs=1e-6)


def test_eval_needs_a_classifier_head(data, pretrained, tmp_path):
    with pytest.raises(SystemExit, match="no classifier head"):
        ft.main(ft.get_args(_argv(data, tmp_path, "--eval", "--finetune", pretrained)))


def test_linear_probe_leaves_every_backbone_weight_unchanged(data, pretrained, tmp_path):
    ft.main(ft.get_args(_argv(data, tmp_path, "--finetune", pretrained, "--linear_probing", "--lr", "0.1",
                              "--epochs", "1")))
    after = torch.load(tmp_path / "checkpoint-latest.pth", map_location="cpu", weights_only=True)["model"]
    encoder = {k[len("encoder."):]: v for k, v in
               torch.load(pretrained, map_location="cpu", weights_only=True)["model"].items()
               if k.startswith("encoder.")}
    backbone = {k[len("backbone."):]: v for k, v in after.items() if k.startswith("backbone.")}
    assert set(backbone) == set(encoder)  # the pretrained final norm is used, no fresh fc_norm
    assert all(torch.equal(backbone[k], encoder[k]) for k in encoder)
    assert "head.1.weight" in after and after["head.0.num_batches_tracked"].item() == 4
    assert "linear probing: no RandAugment" in (tmp_path / "train.log").read_text()


def test_knn_finds_itself_when_queries_are_the_bank(data, pretrained, tmp_path):
    same = tmp_path / "same"
    same.mkdir()
    for split in ("train", "val"):  # val.csv = train.csv: each query's nearest video is itself
        shutil.copy(os.path.join(data, "train.csv"), same / f"{split}.csv")
    argv = ["--model", "vit_small_patch16_224", "--data_set", "custom", "--nb_classes", "4", "--data_path",
            str(same), "--data_root", data, "--input_size", "32", "--short_side_size", "32", "--num_frames", "4",
            "--sampling_rate", "2", "--batch_size", "3", "--num_workers", "0", "--k", "1", "20",
            "--output_dir", str(tmp_path / "one")]
    one = evals.knn.main(evals.knn.get_args(argv + ["--finetune", pretrained]))
    assert one["per_k"]["1"] == {"top1": 100.0, "top5": 100.0}
    assert one["num_train"] == one["num_val"] == 8
    _torchrun("evals.knn", argv[:-1] + [str(tmp_path / "two"), "--finetune", pretrained, "--device", "cpu"])
    two = json.loads((tmp_path / "two" / "knn_results.json").read_text())
    assert two["per_k"] == one["per_k"]
    random_init = evals.knn.main(evals.knn.get_args(argv[:-1] + [str(tmp_path / "rand"), "--random_init"]))
    assert random_init["checkpoint"] == "random_init"
    with pytest.raises(SystemExit, match="exactly one"):
        evals.knn.main(evals.knn.get_args(argv))


def test_bad_labels_and_missing_class_count_are_clear_errors(data, tmp_path, capsys):
    with pytest.raises(Exception, match=r"train\.csv:\d+: label \d outside \[0, 2\)"):
        ft.main(ft.get_args(_argv(data, tmp_path, "--nb_classes", "2")))
    argv = _argv(data, tmp_path)
    i = argv.index("--nb_classes")
    with pytest.raises(SystemExit):  # at parse time, before anything is built
        ft.get_args(argv[:i] + argv[i + 2:])
    assert "needs --nb_classes" in capsys.readouterr().err


@pytest.mark.parametrize("stage,precision", [(0, "fp32"), (2, "bf16")])
def test_deepspeed_two_processes_and_resume(data, pretrained, tmp_path, stage, precision):
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional; requirements-test.txt installs it for CI")
    argv = _argv(data, tmp_path, "--finetune", pretrained, "--enable_deepspeed", "--zero_stage", str(stage),
                 "--precision", precision, "--clip_grad", "1.0", "--layer_decay", "0.75", "--epochs", "1",
                 "--device", "cpu")
    _torchrun("run_class_finetuning.py", argv)
    assert sorted(_losses(tmp_path)) == [1, 2]  # 8 videos / (2 per process x 2) = 2 steps
    assert os.path.isdir(tmp_path / "deepspeed" / "step-2")
    weights = torch.load(tmp_path / "checkpoint-0.pth", map_location="cpu", weights_only=True)
    assert weights["step"] == 2 and "head.weight" in weights["model"]
    config = json.loads((tmp_path / "deepspeed_config.json").read_text())
    assert config["zero_optimization"]["stage"] == stage and config["gradient_clipping"] == 1.0
    argv[len(argv) - 1 - argv[::-1].index("--epochs") + 1] = "2"  # the last --epochs wins
    out = _torchrun("run_class_finetuning.py", argv)
    assert "resumed from" in out and "step-2" in out
    assert sorted(_losses(tmp_path)) == [1, 2, 3, 4]
    assert json.loads((tmp_path / "test_results.json").read_text())["num_videos"] == 4


def test_deepspeed_keeps_layer_decay_groups_and_matches_plain_torch(data, pretrained, tmp_path, monkeypatch):
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional; requirements-test.txt installs it for CI")
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):  # set for DeepSpeed in this process; undone afterwards
        monkeypatch.setenv(name, "1" if name == "WORLD_SIZE" else "0")
    # lr 0.5 * 2 / 256 without warmup: AdamW moves each weight by about lr * its group's lr_scale per
    # step, so a DeepSpeed optimizer that lost the layer-decay scales would end far from the torch one.
    common = ["--finetune", pretrained, "--epochs", "1", "--clip_grad", "1.0", "--mixup", "0", "--cutmix", "0",
              "--aa", "none", "--reprob", "0", "--drop_path", "0", "--lr", "0.5", "--warmup_epochs", "0"]
    ft.main(ft.get_args(_argv(data, tmp_path / "torch", *common)))
    ft.main(ft.get_args(_argv(data, tmp_path / "ds", *common, "--enable_deepspeed", "--zero_stage", "0")))
    a, b = _losses(tmp_path / "torch"), _losses(tmp_path / "ds")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-4, abs=1e-5)
    wa = torch.load(tmp_path / "torch" / "checkpoint-0.pth", map_location="cpu", weights_only=True)["model"]
    wb = torch.load(tmp_path / "ds" / "checkpoint-0.pth", map_location="cpu", weights_only=True)["model"]
    start = torch.load(pretrained, map_location="cpu", weights_only=True)["model"]
    for k in ("patch_embed.proj.weight", "blocks.5.attn.qkv.weight", "blocks.11.mlp.fc2.weight"):
        assert (wa[k] - start["encoder." + k]).abs().max() > 1e-4  # the weights did move
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(wa["head.weight"], wb["head.weight"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("data_set, flags, expected", [("custom", [], True), ("custom", ["--no_flip"], False),
                                                       ("SSV2", [], False), ("SSV2", ["--flip"], True)])
def test_flip_follows_the_data_set_unless_a_flag_says_otherwise(data, tmp_path, data_set, flags, expected):
    argv = _argv(data, tmp_path, *flags)
    argv[argv.index("custom")] = data_set
    args = ft.get_args(argv)
    _, sampling, default_flip = ft.DATA_SETS[data_set]
    built = ft.build_datasets(args, 4, sampling, default_flip, augment=True)
    assert built["train"].augment.flip is expected


def test_decode_short_side_reaches_every_split(data, tmp_path):
    built = ft.build_datasets(ft.get_args(_argv(data, tmp_path, "--decode_short_side", "40")), 4, "dense", True,
                              augment=True)
    assert {split: d.decode.short_side for split, d in built.items()} == {"train": 40, "val": 40, "test": 40}
    assert ft.build_datasets(ft.get_args(_argv(data, tmp_path)), 4, "dense", True, augment=True)["val"].decode \
        .short_side is None


@pytest.mark.parametrize("extra", [["--video_backend", "torchcodec_cuda"], ["--decode_short_side", "0"]])
def test_decode_short_side_is_refused_at_parse_time_where_it_cannot_work(data, tmp_path, capsys, extra):
    argv = ["--decode_short_side", "40", *extra]
    with pytest.raises(SystemExit):
        ft.get_args(_argv(data, tmp_path, *argv))
    err = capsys.readouterr().err
    assert "--decode_short_side" in err and "--video_backend one of pyav, decord, torchcodec" in err


def test_flips_follow_dataset_json_and_an_undeclared_custom_set_warns(tmp_path, caplog):
    """datasets.synthetic declares its direction labels flip-sensitive: no flips, logged with the
    reason; an undeclared custom set flips and warns naming --no_flip; the flags override both."""
    import finetune_build
    from datasets.synthetic import make_dataset

    motion, shapes, plain = tmp_path / "motion", tmp_path / "shapes", tmp_path / "plain"
    make_dataset(str(motion), num_train=1, num_val=0, num_test=0, frames=2, height=16, width=16)
    make_dataset(str(shapes), num_train=1, num_val=0, num_test=0, frames=2, height=16, width=16, label_kind="shape")
    plain.mkdir()
    with caplog.at_level(logging.INFO, logger="sigma"):
        assert finetune_build.training_flip("custom", str(motion), None, True) is False
        assert "hflip_changes_label true" in caplog.text and "training flips off" in caplog.text
        assert finetune_build.training_flip("custom", str(shapes), None, True) is True
        caplog.clear()
        assert finetune_build.training_flip("custom", str(plain), None, True) is True
        assert [r.levelname for r in caplog.records] == ["WARNING"] and "--no_flip" in caplog.text
        caplog.clear()
        assert finetune_build.training_flip("custom", str(motion), True, True) is True  # --flip wins
        assert finetune_build.training_flip("custom", str(plain), False, True) is False
        assert finetune_build.training_flip("SSV2", str(plain), None, False) is False
        assert not caplog.records
    (plain / "dataset.json").write_text('{"hflip_changes_label": "yes"}')
    with pytest.raises(SystemExit, match="dataset.json: 'hflip_changes_label' must be true or false"):
        finetune_build.training_flip("custom", str(plain), None, True)


def test_lr_rule_names_the_actual_lr_and_its_factors():
    from schedules import lr_rule, make_schedule

    text = lr_rule(lr=1e-3, batch_size=4, accum=1, world_size=1)
    assert text.startswith("lr 1.56e-05 = base lr 0.001 x batch 4 x accum 1 x 1 process / 256")
    schedule = make_schedule(micro_batches=10, accum=2, batch_size=8, world_size=4, num_videos=320, lr=0.05,
                             min_lr=0, warmup_lr=0, epochs=1, warmup_epochs=0, warmup_steps=0, weight_decay=0,
                             weight_decay_end=None)
    assert lr_rule(lr=0.05, batch_size=8, accum=2, world_size=4) == (
        f"lr {schedule.lr:.3g} = base lr 0.05 x batch 8 x accum 2 x 4 processes / 256 (--lr is the base lr)")
