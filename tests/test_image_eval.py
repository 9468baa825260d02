"""evals.knn and evals.probe on the image benchmarks: generated ImageNet folders and a fake CIFAR-100 archive."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image

import evals.knn
import evals.probe

pytestmark = pytest.mark.e2e  # runs the drivers end to end (pytest.ini)

COMMON = ["--model", "vit_tiny_patch16_224", "--random_init", "--input_size", "32", "--short_side_size", "32",
          "--num_frames", "2", "--batch_size", "4", "--num_workers", "0"]
COLOURS = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]


@pytest.fixture
def imagenet(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c, colour in enumerate(COLOURS):
            os.makedirs(tmp_path / "in1k" / split / f"n0000000{c}")
            for i in range(n):  # one colour per class, a little noise per image
                pixels = np.clip(np.array(colour) + rng.integers(-10, 10, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "in1k" / split / f"n0000000{c}" / f"{i}.JPEG")
    return str(tmp_path / "in1k")


def test_knn_on_imagenet_folders_finds_the_colour_classes(imagenet, tmp_path):
    argv = [*COMMON, "--data_set", "ImageNet", "--nb_classes", "3", "--data_path", imagenet, "--k", "1", "3"]
    results = evals.knn.main(evals.knn.get_args(argv + ["--output_dir", str(tmp_path / "knn")]))
    assert (results["num_train"], results["num_val"]) == (9, 6)
    assert results["per_k"]["1"]["top1"] == 100.0  # same-colour images are each other's neighbours
    official = evals.knn.main(evals.knn.get_args(argv + ["--official_protocol", "--test_num_crop", "2",
                                                       "--output_dir", str(tmp_path / "official")]))
    assert official["num_train"] == official["num_val"] == 6 * 2  # val images x crops, one segment
    with pytest.raises(Exception, match=r"label 2 outside \[0, 2\)"):
        evals.knn.main(evals.knn.get_args([*COMMON, "--data_set", "ImageNet", "--nb_classes", "2", "--data_path",
                                         imagenet, "--output_dir", str(tmp_path / "bad")]))


def _cifar(root, per_class=4, classes=4):
    """Official layout with bytes keys; the test batch repeats the train images, so kNN k=1 is exact."""
    rng = np.random.default_rng(0)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    labels = [c for c in range(classes) for _ in range(per_class)]
    base = rng.integers(0, 256, (classes, 3072))
    data = np.clip(base[labels] + rng.integers(-8, 8, (len(labels), 3072)), 0, 255).astype(np.uint8)
    for split in ("train", "test"):
        with open(os.path.join(folder, split), "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * len(labels)}, f, protocol=2)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f, protocol=2)
    return str(root)


def test_knn_and_probe_on_cifar100(tmp_path):
    root = _cifar(str(tmp_path / "cifar"))
    knn = evals.knn.main(evals.knn.get_args([*COMMON, "--data_set", "CIFAR-100", "--data_path", root, "--k", "1",
                                           "--output_dir", str(tmp_path / "knn")]))
    assert (knn["num_train"], knn["num_val"]) == (16, 16) and knn["top1"] == 100.0
    probe = evals.probe.main(evals.probe.get_args([*COMMON, "--data_set", "CIFAR-100", "--data_path", root,
                                                 "--Cs", "1", "--cv_folds", "2", "--k", "1",
                                                 "--output_dir", str(tmp_path / "probe")]))
    entry = probe["labellings"]["cifar"]
    assert entry["nb_classes"] == 100 and entry["num_train"] == entry["num_val"] == 16
    assert entry["knn"]["1"] == 100.0 and entry["probe"]["train_top1"] == 100.0


def test_image_flags_parse():
    args = evals.knn.get_args(["--data_set", "ImageNet", "--data_path", "/in1k", "--class_list", "/in1k/classes.txt"])
    assert args.class_list == "/in1k/classes.txt" and args.num_frames == 16 and args.batch_size == 32
    assert evals.probe.get_args(["--data_set", "CIFAR-100", "--data_path", "/c"]).data_path == ["/c"]
    with pytest.raises(SystemExit):
        evals.probe.get_args(["--data_path", "/c", "--num_frames", "3"])  # not a multiple of the tube length
