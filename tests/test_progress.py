"""progress.Progress: log lines with count, rate and ETA off a terminal; nothing off rank 0."""
import logging

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
