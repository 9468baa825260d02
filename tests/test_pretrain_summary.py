"""The closing line of a pretraining run: readable, with the collapse monitors named and bounded by K."""
import json
import logging

import run_sigma_pretraining

EPOCH = {"train_loss": 8.0, "bad_samples": 1, "epoch": 0}
SIGMA = {"train_protos_used_pred": 59.6, "train_protos_used_target": 58.2, "train_score_protos_used_pred": 6.4,
         "train_score_protos_used_target": 1.0, "train_score_usage_entropy_pred": 1.561,
         "train_score_usage_entropy_target": 0.0}


def _summary(tmp_path, caplog, last, config=None):
    lines = [EPOCH, {**EPOCH, **last, "train_loss": 5.5, "epoch": 9, "bad_samples": 2}]
    (tmp_path / "log.txt").write_text("".join(json.dumps(e) + "\n" for e in lines))
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.INFO, logger=run_sigma_pretraining.logger.name):
        run_sigma_pretraining._summary(str(tmp_path), str(tmp_path / "tb"))
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done:")]
    return line


def test_summary_names_both_views_of_prototype_use(tmp_path, caplog):
    line = _summary(tmp_path, caplog, SIGMA, {"num_prototypes": 64})
    assert "{" not in line and "'" not in line  # no dict repr
    assert line.startswith("done: train_loss 8.0000 (epoch 0) -> 5.5000 (epoch 9); ")
    assert ("prototypes used (balanced Sinkhorn codes) 60/64 pred, 58/64 target; raw-score argmax 6/64 pred, "
            "1/64 target, usage entropy 1.56 pred, 0.00 target of ln 64 = 4.16 nats") in line
    assert "PRETRAIN.md" in line and "bad samples 3" in line and f"checkpoints in {tmp_path};" in line


def test_summary_without_config_or_prototypes(tmp_path, caplog):
    line = _summary(tmp_path, caplog, SIGMA)  # no config.json: no K to compare with
    assert "codes) 60 pred, 58 target; raw-score argmax 6 pred, 1 target, usage entropy 1.56 pred, 0.00 target nats" \
        in line
    caplog.clear()
    line = _summary(tmp_path, caplog, {"train_loss_pred": 1.0}, {"num_prototypes": 64})
    assert "no prototypes (pixel targets)" in line
