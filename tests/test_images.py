"""Image benchmarks as clips: ImageNet folders, the CIFAR-100 python archive, the VideoClipDataset item layout."""
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import transforms as T
from datasets.annotations import AnnotationError
from datasets.images import (ImageArray, ImageClipDataset, ImageFiles, image_folder_classes, image_split,
                             read_cifar100, read_image_folder)
from datasets.video_dataset import ClipConfig, collate_clips

COLOURS = {"n01440764": (200, 30, 30), "n01443537": (30, 200, 30), "n01484850": (30, 30, 200)}


def _jpeg(path, colour, h=30, w=40, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.new("RGB", (w, h), colour)
    (image.convert(mode) if mode != "RGB" else image).save(str(path), format="JPEG", quality=95)


@pytest.fixture
def imagenet(tmp_path):
    root = tmp_path / "imagenet"
    for split, n in (("train", 3), ("val", 2)):
        for wnid, colour in COLOURS.items():
            for i in range(n):
                _jpeg(root / split / wnid / f"{wnid}_{i}.JPEG", colour)
    return str(root)


def test_imagenet_items_have_the_video_layout(imagenet):
    source = image_split("ImageNet", imagenet, "val")
    assert len(source) == 6 and source.labels == [0, 0, 1, 1, 2, 2]
    clip = ClipConfig(num_frames=4, input_size=16, short_side_size=18)
    item = ImageClipDataset(source, "val", clip)[2]
    assert set(item) == {"video", "label", "index", "segment", "crop", "bad"} and item["bad"] == []
    video = item["video"]
    assert video.shape == (1, 3, 4, 16, 16) and video.dtype == torch.float32
    assert all(torch.equal(video[:, :, t], video[:, :, 0]) for t in range(4))  # T copies of one image
    expected = T.to_normalized_float(torch.tensor(COLOURS["n01443537"], dtype=torch.uint8).view(1, 3, 1, 1))
    torch.testing.assert_close(video[0, :, 0].mean((1, 2)), expected.flatten(), atol=0.1, rtol=0)  # green, JPEG loss
    assert item["label"].tolist() == [1] and item["index"].tolist() == [2] and item["segment"].tolist() == [0]
    test = ImageClipDataset(source, "test", clip, test_num_crop=3)
    batch = collate_clips([test[0], test[5]])
    assert batch["video"].shape == (6, 3, 4, 16, 16) and batch["crop"].tolist() == [0, 1, 2, 0, 1, 2]
    assert batch["label"].tolist() == [0, 0, 0, 2, 2, 2] and batch["num_items"] == 2


def test_train_crops_are_seeded_by_seed_epoch_and_item(imagenet):
    source = ImageFiles(read_image_folder(imagenet, "train", image_folder_classes(imagenet)))
    image = torch.arange(3 * 30 * 40, dtype=torch.float32).view(3, 30, 40).remainder(251).to(torch.uint8)
    source.load = lambda i: image  # a textured image, so different crops differ
    ds = ImageClipDataset(source, "train", ClipConfig(num_frames=2, input_size=16))
    first = ds[4]["video"]
    assert torch.equal(first, ds[4]["video"])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[4]["video"])


def test_class_list_order_and_mismatch(imagenet, tmp_path):
    assert image_folder_classes(imagenet) == sorted(COLOURS)
    listing = tmp_path / "LOC_synset_mapping.txt"
    listing.write_text("n01484850 great white shark\nn01440764 tench, Tinca tinca\nn01443537 goldfish\n")
    classes = image_folder_classes(imagenet, str(listing))
    assert classes == ["n01484850", "n01440764", "n01443537"]  # the file's order
    val = image_split("ImageNet", imagenet, "val", str(listing))
    assert {os.path.basename(s.path).split("_")[0]: s.label for s in val.samples} == {
        "n01484850": 0, "n01440764": 1, "n01443537": 2}
    listing.write_text("n01440764\nn01443537\nn09999999\n")
    mismatch = r"LOC_synset_mapping\.txt does not match.*\['n09999999'\].*\['n01484850'\]"
    with pytest.raises(AnnotationError, match=mismatch):
        image_folder_classes(imagenet, str(listing))
    os.makedirs(os.path.join(imagenet, "val", "n07777777"))
    with pytest.raises(AnnotationError, match=r"val: 1 class folders not among the 3 classes"):
        read_image_folder(imagenet, "val", classes)


def test_loose_val_images_and_bad_files(imagenet, tmp_path):
    flat = tmp_path / "flat"
    _jpeg(flat / "train" / "n01440764" / "a.JPEG", (1, 2, 3))
    _jpeg(flat / "val" / "ILSVRC2012_val_00000001.JPEG", (1, 2, 3))
    with pytest.raises(AnnotationError, match=r"val: no class folders but 1 loose images"):
        image_split("ImageNet", str(flat), "val")
    broken = os.path.join(imagenet, "val", "n01440764", "n01440764_0.JPEG")
    with open(broken, "wb") as f:
        f.write(b"not a jpeg")
    cmyk = os.path.join(imagenet, "val", "n01440764", "n01440764_1.JPEG")
    _jpeg(cmyk, (200, 30, 30), mode="CMYK")  # ImageNet has a few CMYK JPEGs
    ds = ImageClipDataset(image_split("ImageNet", imagenet, "val"), "val",
                          ClipConfig(num_frames=2, input_size=16, short_side_size=16))
    item = ds[0]
    assert item["bad"][0][0] == broken and "cannot decode" in item["bad"][0][1] and item["index"].item() != 0
    assert ds[1]["bad"] == [] and ds[1]["video"].shape == (1, 3, 2, 16, 16)


def _cifar(root, train_n=6, test_n=4, seed=0):
    """The official layout: cifar-100-python/{train,test,meta}, Python-2 style pickles (bytes keys)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    for split, n in (("train", train_n), ("test", test_n)):
        batch = {b"filenames": [b"x.png"] * n, b"batch_label": split.encode(), b"fine_labels": list(range(n)),
                 b"coarse_labels": [0] * n, b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with open(os.path.join(folder, split), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                     b"coarse_label_names": [b"c"] * 20}, f, protocol=2)
    return folder


def test_cifar100_archive_pixels_and_labels(tmp_path):
    folder = _cifar(str(tmp_path))
    images, labels, names = read_cifar100(str(tmp_path), "test")
    assert images.shape == (4, 32, 32, 3) and labels == [0, 1, 2, 3] and names[99] == "class99"
    with open(os.path.join(folder, "test"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    # Row layout: 1024 red values (row-major), then 1024 green, then 1024 blue.
    assert images[1, 0, 0, 0] == raw[1, 0] and images[1, 0, 1, 1] == raw[1, 1024 + 1]
    assert images[1, 31, 31, 2] == raw[1, 3071]
    source = image_split("CIFAR-100", folder, "val")  # the folder itself works too; val = the test batch
    assert isinstance(source, ImageArray) and len(source) == 4
    item = ImageClipDataset(source, "val", ClipConfig(num_frames=2, input_size=32, short_side_size=32))[3]
    expected = T.to_normalized_float(torch.from_numpy(images[3]).permute(2, 0, 1)[None])  # [3, 1, 32, 32]
    torch.testing.assert_close(item["video"][0], expected.expand(-1, 2, -1, -1))
    assert item["label"].item() == 3
    big = ImageClipDataset(source, "train", ClipConfig(num_frames=2, input_size=48))[0]["video"]
    assert big.shape == (1, 3, 2, 48, 48)  # 32x32 images enlarged to the model's input


def test_cifar100_refuses_other_pickles(tmp_path):
    folder = _cifar(str(tmp_path))

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    with open(os.path.join(folder, "test"), "wb") as f:
        pickle.dump({b"data": Exploit()}, f)
    with pytest.raises(AnnotationError, match=r"test: not a CIFAR-100 pickle \(global .*system is not allowed"):
        read_cifar100(str(tmp_path), "test")
    with pytest.raises(FileNotFoundError, match="cifar-100-python/train"):
        os.remove(os.path.join(folder, "train"))
        read_cifar100(str(tmp_path), "train")
