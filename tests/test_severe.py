"""SEVERE pieces: UCFRep and Charades readers, Charades mAP and the repetition-counting errors."""
import os

import numpy as np
import pytest
import torch

from datasets.annotations import AnnotationError
from datasets.severe import CHARADES_CLASSES, multi_hot, read_charades, read_ucfrep
from evals.severe_metrics import average_precision, charades_map, counting_metrics, max_over_views

HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"


def _charades_csv(path, rows):
    with open(path, "w") as f:
        f.write(HEADER)
        for vid, actions, length in rows:
            f.write(f'{vid},S1,Kitchen,6,7,Yes,"A person, in a kitchen",food;dish,"opens, closes",'
                    f'"{actions}",{length}\n')
    return str(path)


def test_charades_reader_multi_hot_and_actions(tmp_path):
    csv = _charades_csv(tmp_path / "Charades_v1_train.csv", [
        ("46GP8", "c092 11.90 21.20;c147 0.00 12.60", 24.83), ("N11GT", "", 30.0),
        ("0IH69", "c000 1.5 3;c092 4 9", 8.5)])
    samples = read_charades(csv, "/videos")
    assert [s.video_id for s in samples] == ["46GP8", "N11GT", "0IH69"]
    assert samples[0].path == "/videos/46GP8.mp4" and samples[0].labels == (92, 147)
    assert samples[0].actions == ((92, 11.9, 21.2), (147, 0.0, 12.6)) and samples[0].length == 24.83
    assert samples[1].labels == () and samples[2].labels == (0, 92)
    targets = multi_hot(samples)
    assert targets.shape == (3, CHARADES_CLASSES) and targets.sum().item() == 4
    assert targets[0, 92] == targets[0, 147] == targets[2, 0] == 1 and targets[1].sum() == 0


def test_charades_bad_input_names_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="Charades_v1_test.csv"):
        read_charades(str(tmp_path / "Charades_v1_test.csv"), "/videos")
    bad = _charades_csv(tmp_path / "bad.csv", [("A", "c001 1.0 2.0", 5), ("B", "c092 11.90", 5),
                                               ("C", "c157 0 1", 5), ("D", "x12 0 1", 5)])
    with pytest.raises(AnnotationError) as e:
        read_charades(bad, "/videos")
    text = str(e.value)
    assert "3 bad rows" in text and f"{bad}:3: action 'c092 11.90'" in text
    assert f"{bad}:4: class c157 outside [0, 157)" in text and f"{bad}:5: action 'x12 0 1'" in text
    (tmp_path / "nohead.csv").write_text("id,length\nA,3\n")
    with pytest.raises(AnnotationError, match=r"nohead\.csv:1: .*lacks the column\(s\) \['actions'\]"):
        read_charades(str(tmp_path / "nohead.csv"), "/videos")


def _ucfrep(tmp_path, bounds_by_video, duration=100):
    from scipy.io import savemat

    ann, videos = tmp_path / "annotations", tmp_path / "UCF-101"
    for split in ("train", "val"):
        (ann / split).mkdir(parents=True, exist_ok=True)
    for name, bounds in bounds_by_video.items():
        label = {"duration": np.array([[duration]]), "start_frame": np.array([[bounds[0]]]),
                 "end_frame": np.array([[bounds[-1]]]), "temporal_bound": np.array(bounds, dtype=float)[:, None],
                 "offset_next_estimate": np.zeros((1, 5)), "offset_pre_estimate": np.zeros((1, 5))}
        savemat(str(ann / "train" / f"{name}.mat"), {"label": label})
        cls = name[2:].rsplit("_", 2)[0]
        (videos / cls).mkdir(parents=True, exist_ok=True)
        (videos / cls / f"{name}.avi").write_bytes(b"")
    return str(ann), str(videos)


def test_ucfrep_reader_counts_and_skips_as_severe(tmp_path):
    pytest.importorskip("scipy")
    ann, videos = _ucfrep(tmp_path, {"v_JumpingJack_g01_c01": [3, 10, 18, 25, 33],
                                     "v_PushUps_g02_c03": [5, 20, 40], "v_Lunges_g01_c02": [1, 9]})
    samples = read_ucfrep(ann, videos, "train")
    assert [(os.path.basename(s.path), s.count, s.start_frame, s.end_frame, s.num_frames) for s in samples] == [
        ("v_JumpingJack_g01_c01.avi", 4.0, 3, 33, 100), ("v_PushUps_g02_c03.avi", 2.0, 5, 40, 100)]
    # Lunges has 1 repetition (2 boundaries): left out.
    assert samples[0].path == os.path.join(videos, "JumpingJack", "v_JumpingJack_g01_c01.avi")
    os.remove(samples[1].path)
    assert len(read_ucfrep(ann, videos, "train")) == 1  # a missing video is left out, as SEVERE
    with pytest.raises(AnnotationError, match="val: no .mat annotation files"):
        read_ucfrep(ann, videos, "val")
    with pytest.raises(FileNotFoundError, match="test"):
        read_ucfrep(ann, videos, "test")


def test_ucfrep_malformed_annotation_names_the_file(tmp_path):
    pytest.importorskip("scipy")
    from scipy.io import savemat

    ann, videos = _ucfrep(tmp_path, {"v_PushUps_g02_c03": [5, 20, 40]})
    savemat(os.path.join(ann, "train", "v_Squat_g01_c01.mat"), {"label": {"duration": np.array([[9]])}})
    with pytest.raises(AnnotationError, match=r"v_Squat_g01_c01\.mat: the 'label' struct lacks \['start_frame'"):
        read_ucfrep(ann, videos, "train")
    os.remove(os.path.join(ann, "train", "v_Squat_g01_c01.mat"))
    with open(os.path.join(ann, "train", "v_Squat_g01_c02.mat"), "wb") as f:
        f.write(b"not matlab")
    with pytest.raises(AnnotationError, match=r"v_Squat_g01_c02\.mat: not a readable MATLAB file"):
        read_ucfrep(ann, videos, "train")


def test_average_precision_by_hand_and_ties():
    # Positives at ranks 1, 3, 5: AP = (1/1 + 2/3 + 3/5) / 3 = 34/45.
    scores, labels = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]), torch.tensor([1, 0, 1, 0, 1])
    for ties in ("grouped", "ordered"):
        assert average_precision(scores, labels, ties) == pytest.approx(34 / 45)
    # A tie between a positive and a negative at 0.5 (positive listed first).
    scores, labels = torch.tensor([0.9, 0.5, 0.5, 0.1]), torch.tensor([0, 1, 0, 1])
    # grouped: thresholds 0.9 (R 0, P 0), 0.5 (R 1/2, P 1/3), 0.1 (R 1, P 1/2): 1/2 * 1/3 + 1/2 * 1/2 = 5/12.
    assert average_precision(scores, labels, "grouped") == pytest.approx(5 / 12)
    # ordered (stable sort): ranks 2 and 4: (1/2 + 2/4) / 2 = 1/2; with the negative listed first, 5/12.
    assert average_precision(scores, labels, "ordered") == pytest.approx(1 / 2)
    assert average_precision(scores, torch.tensor([0, 0, 1, 1]), "ordered") == pytest.approx(5 / 12)
    assert np.isnan(average_precision(scores, torch.zeros(4)))


def test_charades_map_skips_classes_without_positives_and_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.metrics")
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.5, 0.3], [0.7, 0.2, 0.2], [0.6, 0.9, 0.4], [0.5, 0.1, 0.0]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]])
    result = charades_map(scores, labels)
    # Class 0: 34/45 (as above); class 1: positives ranked 1 and tied 2nd/3rd with a negative:
    # thresholds 0.9 (R 1/2, P 1), 0.5 (R 1, P 2/3): 1/2 + 1/2 * 2/3 = 5/6; class 2: no positive.
    assert result["num_classes_scored"] == 2 and result["ap"][2] is None
    assert result["mAP"] == pytest.approx(100 * (34 / 45 + 5 / 6) / 2)
    keep = labels.sum(0) > 0
    expected = sklearn.average_precision_score(labels[:, keep].numpy(), scores[:, keep].numpy(), average=None)
    assert result["mAP"] == pytest.approx(100 * expected.mean())
    random = torch.rand(40, 6, generator=torch.Generator().manual_seed(0))
    truth = (torch.rand(40, 6, generator=torch.Generator().manual_seed(1)) < 0.3).long()
    assert charades_map(random, truth)["mAP"] == pytest.approx(
        100 * sklearn.average_precision_score(truth.numpy(), random.numpy(), average=None).mean())
    with pytest.raises(ValueError, match="no class has a positive"):
        charades_map(scores, torch.zeros_like(labels))


def test_ordered_charades_map_ranks_videos_without_actions_last_as_the_official_script():
    # Class 0: A positive (0.3), B has no annotated action at all (0.9), C negative with another
    # action (0.5), D positive (0.1). The official evaluation puts B at -inf in every class:
    # order C, A, D, B, positives at ranks 2 and 3: (1/2 + 2/3) / 2 = 7/12. Kept as a scored
    # negative (grouped, as SEVERE's get_map): B, C, A, D, ranks 3 and 4: (1/3 + 2/4) / 2 = 5/12.
    # Class 1: its one positive C is ranked 2nd behind B (0.8) unless B is moved: 1 vs 1/2.
    scores = torch.tensor([[0.3, 0.1], [0.9, 0.8], [0.5, 0.6], [0.1, 0.2]])
    labels = torch.tensor([[1, 0], [0, 0], [0, 1], [1, 0]])
    ordered, grouped = charades_map(scores, labels, "ordered"), charades_map(scores, labels, "grouped")
    assert ordered["ap"] == pytest.approx([100 * 7 / 12, 100.0])
    assert grouped["ap"] == pytest.approx([100 * 5 / 12, 50.0])
    assert ordered["mAP"] == pytest.approx(100 * (7 / 12 + 1) / 2)
    # Without unannotated videos the two modes agree (no ties here).
    assert charades_map(scores[[0, 2, 3]], labels[[0, 2, 3]], "ordered")["mAP"] == pytest.approx(
        charades_map(scores[[0, 2, 3]], labels[[0, 2, 3]], "grouped")["mAP"])


def test_counting_metrics_by_hand():
    m = counting_metrics(torch.tensor([4.4, 6.5, 7.5, 2.5]), torch.tensor([4, 5, 10, 4]))
    # Rounded half to even first (SEVERE's val_epoch: Python round()): 4, 6, 8, 2. |p - t| = 0, 1, 2, 2;
    # normalised 0, 0.2, 0.2, 0.5. Unrounded, 6.5 against 5 would be off by 1.5 (not within one).
    assert m["mae"] == pytest.approx(0.9 / 4) and m["abs_error"] == pytest.approx(5 / 4)
    assert m["obo"] == pytest.approx(2 / 4)
    assert m["mae_over"] == pytest.approx(0.2) and m["mae_under"] == pytest.approx((0.2 + 0.5) / 2)
    assert m["mae_std"] == pytest.approx(np.std([0.0, 0.2, 0.2, 0.5])) and m["num_videos"] == 4
    assert counting_metrics(torch.tensor([3.0]), torch.tensor([2.0]))["obo"] == 1.0  # off by exactly one counts
    # 2.5 rounds to 2 (half to even): off by one; 3.5 rounds to 4: off by two.
    assert counting_metrics(torch.tensor([2.5]), torch.tensor([1.0]))["obo"] == 1.0
    assert counting_metrics(torch.tensor([3.5]), torch.tensor([2.0]))["obo"] == 0.0
    with pytest.raises(ValueError, match="must be > 0"):
        counting_metrics(torch.tensor([1.0]), torch.tensor([0.0]))


def test_counting_without_over_or_under_counted_videos_reports_zero_as_severe():
    # SEVERE's AverageMeter starts at avg 0: MAEP / MAEN are 0 where no video is over / under-counted.
    exact = counting_metrics(torch.tensor([3.2, 7.0]), torch.tensor([3, 7]))
    assert exact["mae"] == exact["mae_over"] == exact["mae_under"] == exact["mae_std"] == 0.0
    assert exact["obo"] == 1.0
    under = counting_metrics(torch.tensor([2.0, 4.0]), torch.tensor([4, 8]))  # both under by half
    assert under["mae_over"] == 0.0 and under["mae_under"] == pytest.approx(0.5)


def test_max_over_views():
    scores = torch.tensor([[0.1, 0.9], [0.7, 0.2], [0.3, 0.3]])
    merged = max_over_views(scores, torch.tensor([0, 0, 2]), num_videos=3)
    assert merged[0].tolist() == pytest.approx([0.7, 0.9]) and merged[2].tolist() == pytest.approx([0.3, 0.3])
    assert torch.isinf(merged[1]).all()
