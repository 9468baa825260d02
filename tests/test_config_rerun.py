"""--config RUN: a run re-run from its own config.json gives the same loss trace and the same resolved
config; the file's flags are defaults that the command line overrides, derived keys are ignored, and
an unknown key or a value of the wrong type is a one-line error naming the file and the key."""
import json
import logging
import os

import pytest

import evals.knn as eval_knn
import evals.probe as eval_probe
import evals.segmentation as eval_segmentation
import run_class_finetuning as finetune
import run_sigma_pretraining as pretrain
from datasets.synthetic import make_dataset

# Every driver that writes output_dir/config.json, with the flags it requires.
DRIVERS = {
    "pretrain": (pretrain, ["--data_path", "d", "--data_path_csv", "d/pretrain.csv"]),
    "finetune": (finetune, ["--data_path", "d", "--data_set", "custom", "--nb_classes", "3"]),
    "knn": (eval_knn, ["--data_path", "d", "--data_set", "custom", "--nb_classes", "3"]),
    "probe": (eval_probe, ["--data_path", "d", "--data_set", "custom", "--nb_classes", "3"]),
    "segmentation": (eval_segmentation, ["--data_path", "d"]),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_dataset(str(root), num_train=8, num_val=2, num_test=2, frames=16, height=48, width=64, seed=0)
    return str(root)


def _losses(out) -> list:
    return [(r["step"], r["loss"]) for r in map(json.loads, open(os.path.join(out, "metrics.jsonl")))]


def _config(out) -> dict:
    return json.loads(open(os.path.join(out, "config.json")).read())


def _write(tmp_path, config: dict) -> str:
    path = tmp_path / "run" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(config))
    return str(path)


def _saved(name: str, tmp_path) -> dict:
    """A config.json as the driver writes it: its parsed flags plus its derived keys."""
    module, argv = DRIVERS[name]
    return {**vars(module.get_args(argv + ["--output_dir", str(tmp_path / "original")])), "world_size": 1,
            "actual_lr": 1e-4}


def _error(capsys, module, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        module.get_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.splitlines()[0]


@pytest.mark.e2e
def test_pretraining_rerun_from_config_gives_the_same_loss_trace(data, tmp_path, caplog):
    first, again = tmp_path / "first", tmp_path / "again"
    pretrain.main(pretrain.get_args([
        "--model", "pretrain_videomae_tiny_patch16_224", "--data_path", data,
        "--data_path_csv", os.path.join(data, "pretrain.csv"), "--input_size", "32", "--num_frames", "4",
        "--sampling_rate", "2", "--batch_size", "2", "--epochs", "2", "--warmup_epochs", "1",
        "--num_prototypes", "16", "--decoder_depth", "1", "--num_workers", "0", "--lr", "0.05",
        "--log_every", "1", "--seed", "3", "--output_dir", str(first)]))
    pretrain.main(pretrain.get_args(["--config", str(first / "config.json"), "--output_dir", str(again)]))
    expected = _losses(first)
    assert len(expected) == 8 and _losses(again) == expected  # 8 videos / 2 per step x 2 epochs, bit for bit
    original, rerun = _config(first), _config(again)
    assert rerun.pop("output_dir") == str(again) and original.pop("output_dir") == str(first)
    assert rerun == original
    # The original resumed from its own folder (--config RUN, its --output_dir): the checkpoint's config
    # is the resolved one, so the "changed flags" check (checkpointing.changed_flags) finds nothing ...
    with caplog.at_level(logging.WARNING, logger="sigma"):
        pretrain.main(pretrain.get_args(["--config", str(first)]))
    assert not [r for r in caplog.records if "differ from its run" in r.message]
    assert _losses(first) == expected  # the run was complete: nothing re-run
    # ... while a flag given beside --config is one.
    pretrain.main(pretrain.get_args(["--config", str(first), "--lr", "0.04"]))
    assert [r for r in caplog.records if "lr: 0.05 -> 0.04" in r.message]


@pytest.mark.e2e
def test_finetuning_rerun_from_config_gives_the_same_loss_trace(data, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    finetune.main(finetune.get_args([
        "--model", "vit_tiny_patch16_224", "--data_set", "custom", "--nb_classes", "4", "--data_path", data,
        "--input_size", "32", "--short_side_size", "32", "--num_frames", "4", "--sampling_rate", "2",
        "--batch_size", "2", "--epochs", "1", "--warmup_epochs", "0", "--num_workers", "0", "--log_every", "1",
        "--test_num_segment", "1", "--test_num_crop", "1", "--seed", "5", "--output_dir", str(first)]))
    finetune.main(finetune.get_args(["-c", str(first), "--output_dir", str(again)]))
    assert len(_losses(first)) == 4 and _losses(again) == _losses(first)
    original, rerun = _config(first), _config(again)
    assert rerun.pop("output_dir") == str(again) and original.pop("output_dir") == str(first)
    assert rerun == original


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_every_driver_takes_a_config_and_the_command_line_wins(name, tmp_path):
    module, argv = DRIVERS[name]
    saved = {**_saved(name, tmp_path), "seed": 7, "device": "cpu", "data_path": "from_config"}
    if name == "probe":  # eval_probe takes several annotation folders
        saved["data_path"] = ["from_config"]
    args = module.get_args(["--config", _write(tmp_path, saved), "--seed", "8"])
    assert args.seed == 8 and args.device == "cpu" and args.output_dir == str(tmp_path / "original")
    assert args.data_path == saved["data_path"]  # a required flag the file gives is no longer required
    assert "config" not in vars(args) and "actual_lr" not in vars(args)  # derived keys ignored
    # The parser is left as it was: without --config its defaults and required flags are back.
    assert module.get_args(argv).seed == 0


def test_config_flag_is_shown_in_help(capsys):
    with pytest.raises(SystemExit):
        pretrain.get_args(["-h"])
    assert "-c RUN, --config RUN" in capsys.readouterr().out


def test_unknown_key_is_an_error_naming_key_and_file(tmp_path, capsys):
    path = _write(tmp_path, {**_saved("pretrain", tmp_path), "batch_sise": 4})
    line = _error(capsys, pretrain, ["--config", path])
    assert path in line and "'batch_sise'" in line and "did you mean batch_size?" in line


def test_config_of_another_driver_is_refused_whole(tmp_path, capsys):
    path = _write(tmp_path, _saved("pretrain", tmp_path))
    line = _error(capsys, finetune, ["--config", str(tmp_path / "run")])
    assert path in line and "mask_ratio" in line and "another driver" in line


@pytest.mark.parametrize("key,value,why", [
    ("batch_size", "four", "'four' is not int"), ("batch_size", 2.5, "invalid literal"),
    ("lr", True, "True is not float"), ("model", "vit_huge_nonsense", "is not one of"),
    ("opt_betas", [0.9], "expected 2 values"), ("pin_mem", "yes", "is not true or false"),
    ("epochs", None, "null"), ("data_path", 3, "3 is not str")])
def test_bad_value_is_an_error_naming_the_key(tmp_path, capsys, key, value, why):
    path = _write(tmp_path, {**_saved("pretrain", tmp_path), key: value})
    line = _error(capsys, pretrain, ["--config", path])
    assert line.startswith("run_sigma_pretraining.py: error: --config ") and path in line
    assert f"key '{key}'" in line and why in line


def test_config_values_go_through_the_flag_checks(tmp_path, capsys):
    # A value of the right type but out of range is refused as on the command line (check_flags).
    path = _write(tmp_path, {**_saved("pretrain", tmp_path), "batch_size": 0})
    assert "--batch_size 0: must be >= 1" in _error(capsys, pretrain, ["--config", path])


def test_missing_and_broken_files(tmp_path, capsys):
    assert "No such file" in _error(capsys, pretrain, ["--config", str(tmp_path / "nowhere")])
    (tmp_path / "config.json").write_text('{"seed": 1,\n oops}')
    assert "not JSON (line 2" in _error(capsys, pretrain, ["--config", str(tmp_path)])


def test_tools_without_a_run_config_are_unchanged(capsys):
    # extract_features writes no config.json, so it has no --config; subcommand parsers still parse.
    import extract_features
    import hf_weights
    assert "unrecognized argument --config" in _error(capsys, extract_features, ["--data_path", "v", "--config", "x"])
    args = hf_weights.get_args_parser().parse_args(["convert", "a.pth", "b.pth", "--model_key", "model"])
    assert (args.command, args.source, args.out, args.model_key) == ("convert", "a.pth", "b.pth", "model")
