"""progress.Progress: log lines with count, rate and ETA off a terminal; nothing off rank 0."""
import io
import itertools
import logging
import types

import numpy as np
import pytest
import torch

import progress
from progress import Progress, track


def test_log_lines_carry_count_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="progress")
    with Progress(10, "features (val)", unit="clips", log_every_s=0.0, enabled=True, tty=False) as p:
        for _ in range(4):
            p.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("features (val): 1/10 clips (10%)")
    assert "clips/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("features (val): 4/10 clips (40%)") and lines[-1].endswith("(done)")


def test_disabled_progress_logs_nothing_but_counts(caplog):
    caplog.set_level(logging.INFO, logger="progress")
    p = Progress(3, "x", log_every_s=0.0, enabled=False, tty=False)
    p.update(2)
    p.close()
    assert p.count == 2 and not caplog.records


def test_track_yields_every_item_and_takes_len(caplog):
    caplog.set_level(logging.INFO, logger="progress")
    assert list(track([1, 2, 3], desc="t", unit="videos", log_every_s=1e9, enabled=True)) == [1, 2, 3]
    assert caplog.records[-1].getMessage().startswith("t: 3/3 videos (100%)")


class _TinyClassifier(torch.nn.Module):
    """Logits and pooled features of a [B, 3, T, H, W] clip: enough for the evaluation loops."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)

    def forward_features(self, video):
        return video.mean(dim=(2, 3, 4))  # [B, 3]

    def forward(self, video):
        return self.fc(self.forward_features(video))  # [B, 4]


def _batches(n, size=2):
    return [{"video": torch.randn(size, 3, 2, 8, 8), "index": torch.arange(i * size, (i + 1) * size),
             "segment": torch.zeros(size, dtype=torch.long), "crop": torch.zeros(size, dtype=torch.long),
             "label": torch.arange(size) % 4} for i in range(n)]


@pytest.fixture
def slow_clock(monkeypatch):
    """Every clock read of progress.py 31 s after the last: each finished unit is due a log line
    (the default interval is 30 s), without waiting."""
    ticks = itertools.count(0.0, 31.0)
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: next(ticks)))
    monkeypatch.setattr(progress.sys, "stderr", io.StringIO())  # not a terminal: log lines, no bar


def test_long_steps_log_progress_lines_off_a_terminal(caplog, slow_clock, tmp_path):
    """Validation and the multi-view test (engine_for_finetuning.evaluate), kNN / probe / monitor
    feature extraction (evals.common.frozen_features) and transcoding log count, rate and ETA as they go."""
    from datasets.synthetic import render_clip, write_video
    from datasets.transcode import find_ffmpeg, transcode_tree
    from distributed import DistEnv
    from engine_for_finetuning import evaluate
    from evals.common import frozen_features

    caplog.set_level(logging.INFO, logger="progress")
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    evaluate(_TinyClassifier(), _batches(3), env, sharded=False, desc="test (2x3 views)")
    frozen_features(_TinyClassifier(), _batches(3), env, "fp32", desc="kNN features (val)")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        video, _ = render_clip(np.random.default_rng(i), 0, frames=4, height=32, width=32)
        write_video(str(src / f"{i}.mp4"), video)
    transcode_tree(str(src), str(tmp_path / "dst"), workers=1, ffmpeg=find_ffmpeg())
    lines = [r.getMessage() for r in caplog.records]
    for start in ("test (2x3 views): 1/3 batches (33%)", "test (2x3 views): 2/3 batches (67%)",
                  "kNN features (val): 1/3 batches", "transcode: 1/2 videos (50%)"):
        assert any(line.startswith(start) and "/s, elapsed" in line for line in lines), (start, lines)
    assert any(line.startswith("transcode: 2/2 videos (100%)") and line.endswith("(done)") for line in lines)
    assert any("ETA" in line for line in lines)
