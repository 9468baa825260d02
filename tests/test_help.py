"""`-h` of every driver shows the defaults (argparse is the one source of them)."""
import pytest

import eval_knn
import run_class_finetuning
import run_sigma_pretraining
import run_sigma_vis
from datasets import prepare, synthetic


@pytest.mark.parametrize("parse, argv, flag, default", [
    (run_sigma_pretraining.get_args, [], "--num_sample", "1"),
    (run_class_finetuning.get_args, [], "--test_num_segment", "5"),
    (eval_knn.get_args, [], "--random_init", "False"),
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


def test_flags_without_help_show_their_default_and_no_x_flags_do_not_claim_one(capsys):
    with pytest.raises(SystemExit):
        run_sigma_pretraining.get_args(["-h"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  --")}
    assert "(default: 800)" in lines["--epochs"] and "(default: True)" in lines["--pin_mem"]
    assert "default" not in lines["--no_pin_mem"]
