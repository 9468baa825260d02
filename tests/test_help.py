"""`-h` of every driver shows the defaults (argparse is the one source of them)."""
import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
from unittest import mock

import pytest

import evals.knn
import flags
import run_class_finetuning
import run_sigma_pretraining
import run_sigma_vis
from datasets import prepare, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("parse, argv, flag, default", [
    (run_sigma_pretraining.get_args, [], "--num_sample", "1"),
    (run_class_finetuning.get_args, [], "--test_num_segment", "5"),
    (evals.knn.get_args, [], "--random_init", "False"),
    (lambda argv: run_sigma_vis.get_parser().parse_args(argv), [], "--max_videos", "200"),
    (synthetic.get_args, [], "--height", "128"),
    (prepare.get_args, ["csv-from-folders"], "--val_fraction", "0.1"),
    (prepare.get_args, ["transcode"], "--crf", "23"),
])
def test_help_shows_defaults(capsys, parse, argv, flag, default):
    with pytest.raises(SystemExit) as exit_:
        parse([*argv, "-h"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    entry = text.split(f"\n  {flag}", 1)[1].split("\n  -", 1)[0]  # the flag's lines of the help
    assert f"(default: {default})" in " ".join(entry.split()), entry


def test_module_docstrings_keep_their_layout(capsys):
    with pytest.raises(SystemExit):
        synthetic.get_args(["-h"])
    assert "    python -m datasets.synthetic --out /tmp/demo\n" in capsys.readouterr().out


def _help_entries(parse, argv=()):
    """{first flag: its help text on one line} of a driver's -h."""
    out = io.StringIO()
    with pytest.raises(SystemExit), contextlib.redirect_stdout(out):
        parse([*argv, "-h"])
    entries, name = {}, None
    for line in out.getvalue().splitlines():
        if line.startswith("  -"):
            name = line.split()[0].rstrip(",")
            entries[name] = line
        elif name and line.startswith("      "):
            entries[name] += " " + line.strip()
        else:
            name = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


def test_switches_show_the_default_in_force_and_can_be_switched_off():
    pretrain = _help_entries(run_sigma_pretraining.get_args)
    assert pretrain["--pin_mem"].startswith("--pin_mem, --no_pin_mem") and "(default: True)" in pretrain["--pin_mem"]
    assert "(default: True)" in pretrain["--auto_resume"] and "--no_auto_resume" in pretrain["--auto_resume"]
    assert pretrain["--log_dir"].count("default") == 1  # was "(default: output_dir/tb) (default: None)"
    argv = ["--data_path_csv", "x.csv"]
    assert run_sigma_pretraining.get_args(argv).pin_mem and not run_sigma_pretraining.get_args(
        argv + ["--no_pin_mem"]).pin_mem
    assert not run_sigma_pretraining.get_args(argv + ["--no_auto_resume"]).auto_resume

    finetune = _help_entries(run_class_finetuning.get_args, ["--data_path", "d"])
    flip = finetune["--flip"]
    assert flip.startswith("--flip, --no_flip") and "(default: True)" not in flip and "off for SSV2" in flip, flip
    assert "default" not in finetune["--token_norm"].replace("instead of", "")  # the off form of a switch
    ft = ["--data_path", "d", "--data_set", "custom", "--nb_classes", "3"]
    assert [run_class_finetuning.get_args(ft + extra).flip for extra in ([], ["--flip"], ["--no_flip"])] == \
        [None, True, False]

    transcode = _help_entries(prepare.get_args, ["transcode"])
    assert transcode["--b_pyramid"].startswith("--b_pyramid, --no_b_pyramid"), transcode["--b_pyramid"]
    assert "(default: True)" in transcode["--b_pyramid"]
    files = ["transcode", "--src", "a", "--dst", "b"]
    assert prepare.get_args(files).b_pyramid and not prepare.get_args(files + ["--no_b_pyramid"]).b_pyramid


def test_the_evaluation_drivers_agree_on_shared_defaults():
    import evals.probe
    knn, probe = _parser_of(evals.knn.get_args), _parser_of(evals.probe.get_args)
    for dest in ("data_set", "model", "num_frames", "sampling_rate", "input_size", "short_side_size", "batch_size",
                 "num_workers", "video_backend", "temperature", "model_key", "seed"):
        assert knn.get_default(dest) == probe.get_default(dest), dest


@pytest.mark.slow
@pytest.mark.parametrize("argv, expected", [
    (["run_sigma_pretraining.py", "--data_path_csv", "x.csv", "--batchsize", "8"],
     "run_sigma_pretraining.py: error: unrecognized argument --batchsize (did you mean --batch_size?)"),
    (["run_class_finetuning.py", "--data_path", "d", "--batch-size", "8"],
     "run_class_finetuning.py: error: unrecognized argument --batch-size (did you mean --batch_size?)"),
    (["-m", "datasets.prepare", "csv-from-folders", "--root", "r", "--out_dir", "o", "--val_fractoin", "0.2"],
     "python -m datasets.prepare csv-from-folders: error: unrecognized argument --val_fractoin "
     "(did you mean --val_fraction?)"),
    (["-m", "evals.knn", "--data_path", "d", "--data_set", "custom", "--nb_classes", "4", "--num_workers", "-1"],
     "python -m evals.knn: error: --num_workers -1: must be >= 0"),
])
def test_a_wrong_flag_is_one_line_and_a_pointer_to_help(argv, expected):
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0] == expected and len(lines) == 2, proc.stderr  # no usage dump
    assert lines[1].endswith("-h lists every flag and its default") and lines[1].startswith("python")


# ------------------------------------------------------------------------------------------ every flag of every driver

class _Captured(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


def _parser_of(entry, argv=("-h",)):
    """The parser `entry` (a driver's get_args / main) builds, taken at its parse_args call."""
    def capture(self, *args, **kwargs):
        raise _Captured(self)

    with mock.patch.object(flags.ArgumentParser, "parse_args", capture):
        with pytest.raises(_Captured) as caught:
            entry(list(argv))
    return caught.value.parser


def _drivers():
    import evals.probe
    import evals.segmentation
    import extract_features
    import hf_weights
    from datasets import digits, synthetic_vos
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import collect_results
    return {"run_sigma_pretraining.py": run_sigma_pretraining.get_args,
            "run_class_finetuning.py": run_class_finetuning.get_args, "evals.knn": evals.knn.get_args,
            "evals.probe": evals.probe.get_args, "evals.segmentation": evals.segmentation.get_args,
            "run_sigma_vis.py": run_sigma_vis.main,
            "hf_weights.py": lambda argv: hf_weights.get_args_parser().parse_args(argv),
            "datasets.prepare": prepare.get_args, "datasets.synthetic": synthetic.get_args,
            "datasets.synthetic_vos": synthetic_vos.main, "datasets.digits": digits.get_args,
            "scripts/collect_results.py": collect_results.main, "extract_features.py": extract_features.get_args}


def _all_parsers():
    """(name, parser) of every driver and every subcommand."""
    found = []
    for name, entry in _drivers().items():
        todo = [(name, _parser_of(entry))]
        while todo:
            label, parser = todo.pop()
            found.append((label, parser))
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    todo += [(f"{label} {sub}", p) for sub, p in action.choices.items()]
    return found


def _problems(parser) -> list:
    """What is wrong with the -h of one parser's flags: no help, a default stated twice, "(default: None)",
    or a stated default that is not the parsed one (prose is for derived defaults, parsed as None or "")."""
    formatter = parser._get_formatter()
    bad = []
    for action in parser._actions:
        if action.help is argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        if not (action.help or "").strip():
            bad.append(f"{name}: no help text")
            continue
        text = " ".join(formatter._expand_help(action).split())
        stated = list(re.finditer(r"\bdefault\b: ?", text, re.IGNORECASE))
        if len(stated) > 1:
            bad.append(f"{name}: the default is stated {len(stated)} times: {text!r}")
        if not stated:
            continue
        value = text[stated[0].end():]
        default = action.default
        if isinstance(default, str) and default and action.type is not None:
            default = action.type(default)  # argparse converts a string default through the type
        if default is None or default == "":
            if value.startswith(("None)", ")")):
                bad.append(f"{name}: {text!r}: say what is used instead")
        elif not value.startswith(f"{default})"):
            bad.append(f"{name}: help says default {value!r}, the parser's is {default!r}")
    return bad


def test_the_walk_covers_every_driver():
    """Every driver (a module run as __main__; outside bench/) is walked by the test below: a script at the
    top or in scripts/ by its path, a module of datasets/ or evals/ by its `python -m` name."""
    import glob
    drivers = set()
    for folder in ("", "datasets", "evals", "scripts"):
        for path in glob.glob(os.path.join(ROOT, folder, "*.py")):
            if 'if __name__ == "__main__"' in open(path).read():
                rel = os.path.relpath(path, ROOT)
                drivers.add(rel[:-3].replace(os.sep, ".") if folder in ("datasets", "evals") else rel)
    assert drivers == set(_drivers())


def test_every_flag_of_every_driver_has_help_and_a_truthful_default():
    parsers = _all_parsers()
    assert len(parsers) >= 20  # the drivers and the subcommands of prepare and hf_weights
    bad = [f"{label} {problem}" for label, parser in parsers for problem in _problems(parser)]
    assert not bad, "\n".join(bad)


def test_the_check_finds_each_kind_of_untruthful_help():
    p = flags.ArgumentParser("demo.py", "demo")
    p.add_argument("--silent", type=int, default=3)
    p.add_argument("--twice", default=None, help="where (default: output_dir/tb) %(default)s (default: x)")
    p.add_argument("--none", default=None, help="what it is")
    p.add_argument("--stale", type=int, default=4, help="size (default: 3)")
    p.add_argument("--fine", type=float, default=0.5, help="a share")
    p.add_argument("--derived", default="", help="a folder (default: --data_path)")
    problems = _problems(p)
    assert [problem.split(":")[0] for problem in problems] == ["--silent", "--twice", "--none", "--stale"], problems


@pytest.mark.parametrize("parse, argv, expected", [
    (evals.knn.get_args, ["--data_path", "d", "--model", "vit_bse_patch16_224"],
     "python -m evals.knn: error: argument --model: invalid choice: 'vit_bse_patch16_224': did you mean "
     "vit_base_patch16_224?"),
    (prepare.get_args, ["csv-from-folder", "--root", "r"],
     "python -m datasets.prepare: error: argument command: invalid choice: 'csv-from-folder': did you mean "
     "csv-from-folders?"),
])
def test_a_misspelt_choice_names_the_nearest(capsys, parse, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    first, pointer = capsys.readouterr().err.splitlines()
    assert first.startswith(expected + " (choose from ") and pointer.endswith("-h lists every flag and its default")
