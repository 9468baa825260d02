"""run_sigma_vis.py end to end on tiny models and real encoded videos: files, sizes, stable colours."""
import argparse
import json
import math
import os

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageSequence

import modeling_pretrain
import run_sigma_vis as vis
import vis_drawing
from evals.kmeans import kmeans
from checkpointing import CheckpointError
from datasets.decoding import VideoError
from datasets.synthetic import make_dataset, render_clip
from datasets.transforms import to_normalized_float
from engine_for_pretraining import pixel_targets
from helpers import tiny_pretrain, tiny_teacher
from modeling_finetune import patchify

TINY = "tiny_pretrain_test"


@pytest.fixture(autouse=True)
def _tiny_registry(monkeypatch):
    monkeypatch.setitem(modeling_pretrain.MODELS, TINY, tiny_pretrain)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_dataset(str(root), num_train=3, num_val=1, num_test=0, frames=12, height=48, width=64, seed=0)
    return str(root)


@pytest.fixture(scope="module")
def static_video(tmp_path_factory):
    """Eight identical frames of a textured scene, encoded losslessly (x264 at qp 0), so that the
    decoded frames are identical too: write_video's crf 18 lets P-frames drift from the I-frame."""
    frame, _ = render_clip(np.random.default_rng(3), 0, frames=2, height=64, width=80, distractor_prob=1.0)
    path = str(tmp_path_factory.mktemp("static") / "static.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv420p"
        for _ in range(8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame[0], format="rgb24")))
        container.mux(stream.encode())
    return path


def _checkpoint(tmp_path, target_type="mlp", size=32, **model_kwargs):
    loss = "L2" if target_type == "pixel" else "SWAV"
    model = tiny_pretrain(target_type, loss, img_size=size, **model_kwargs)
    config = {"model": TINY, "target_type": target_type, "input_size": size, "num_frames": 4, "sampling_rate": 2,
              "mask_ratio": 0.5, "normalize_target": True, "num_prototypes": model_kwargs.get("num_prototypes", 8)}
    path = str(tmp_path / f"{target_type}.pth")
    torch.save({"model": model.state_dict(), "epoch": 1, "step": 2, "config": config}, path)
    return model.eval(), path


def _video(data):
    return os.path.join(data, "val", "left_to_right", "00000.mp4")


def _tile(side):
    """Shown size of a side x side clip: enlarged by an integer factor to at least MIN_TILE."""
    return side * math.ceil(vis_drawing.MIN_TILE / side)


def _cells(png, row, frames, side, title_lines=2):
    """uint8 [frames, tile, tile, 3]: the frames of one row of a figure of side x side clips."""
    img = np.asarray(Image.open(png).convert("RGB"))
    tile = _tile(side)
    cells = []
    for c in range(frames):
        x, y = vis_drawing.tile_origin(row, c, tile, title_lines)
        cells.append(img[y:y + tile, x:x + tile])
    return np.stack(cells)


def _width(frames, side):
    return vis_drawing.LABEL_W + frames * _tile(side) + (frames - 1) * vis_drawing.GAP


@pytest.mark.e2e
def test_prototype_figures_use_the_checkpoint_config(data, tmp_path):
    _, ckpt = _checkpoint(tmp_path)
    out = tmp_path / "out"
    vis.main(["--checkpoint", ckpt, "--video", _video(data), "--output_dir", str(out), "--device", "cpu"])
    png, gif = out / "00000_tubes.png", out / "00000_tubes.gif"
    assert Image.open(png).format == "PNG" and Image.open(png).width == _width(4, 32)
    # The title names the checkpoint, its epoch and step, and the video.
    title = Image.open(png).text["Title"]
    assert "mlp.pth, after 1 epoch (step 2)" in title and "00000.mp4" in title and "argmax" in title
    # 32-pixel clips are shown at 160 pixels, 32 per tube, each tube labelled with its prototype id.
    assert _tile(32) == 160 >= vis_drawing.MIN_TILE
    overlay = _cells(png, 1, 4, 32)
    assert (overlay == 0).all(axis=-1).any(axis=(1, 2)).all()  # black id text: the blend is never black
    assert not (_cells(png, 0, 4, 32) == 0).all(axis=-1).any()
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.size == (2 * 160 + vis_drawing.GAP, 160 + vis_drawing.CAPTION_H)
        assert im.n_frames == 4
    assert not (out / "00000_reconstruction.png").exists()  # no pixel decoder
    config = json.loads((out / "vis_config.json").read_text())
    assert (config["input_size"], config["num_frames"], config["loss_func"]) == (32, 4, "SWAV")
    # Explicit flags beat the checkpoint's config.
    vis.main(["--checkpoint", ckpt, "--video", _video(data), "--output_dir", str(out), "--device", "cpu",
              "--num_frames", "2", "--assign", "sinkhorn"])
    assert Image.open(png).width == _width(2, 32)
    assert "Sinkhorn" in Image.open(png).text["Title"]
    with Image.open(gif) as im:
        assert im.n_frames == 2


@pytest.mark.e2e
@pytest.mark.parametrize("assign", ["centred", "argmax", "sinkhorn"])
def test_static_scene_keeps_its_colours(static_video, tmp_path, assign):
    model, ckpt = _checkpoint(tmp_path, size=64, num_prototypes=16)
    out = tmp_path / "out"
    vis.main(["--checkpoint", ckpt, "--video", static_video, "--output_dir", str(out), "--device", "cpu",
              "--sampling_rate", "1", "--assign", assign])
    original = _cells(out / "static_tubes.png", 0, 4, 64).astype(np.float32)  # [T, 192, 192, 3]
    overlay = _cells(out / "static_tubes.png", 1, 4, 64).astype(np.float32)
    assert (original == original[0]).all(), "the decoded static frames differ: the test needs identical frames"
    assert (overlay == overlay[0]).all()  # every tube keeps its colour in every time step
    # The colour under each tube is its prototype's, recovered from the alpha blend (the median
    # over the tube's 48 x 48 pixels skips the id written in its centre).
    colour = (overlay - (1 - vis_drawing.OVERLAY_ALPHA) * original) / vis_drawing.OVERLAY_ALPHA  # [T, S, S, 3]
    per_tube = np.median(colour.reshape(4, 4, 48, 4, 48, 3).transpose(0, 1, 3, 2, 4, 5).reshape(4, 4, 4, -1, 3),
                         axis=3)  # [T, 4, 4, 3]
    frames, _ = vis.read_clip(static_video, num_frames=4, sampling_rate=1, input_size=64, backend="decord")
    video = to_normalized_float(frames).unsqueeze(0)
    tubes = patchify(video, 2, 16)  # [1, 32, P, C]: a (2, 4, 4) tube grid
    with torch.no_grad():
        proj = model.head(pixel_targets(tubes, torch.ones(1, 32, dtype=torch.bool), True))[0]  # [32, D]
    cos = F.normalize(proj, dim=-1) @ F.normalize(model.prototypes, dim=1).t()  # [32, 16]
    if assign != "sinkhorn":
        score = cos - cos.mean(0, keepdim=True) if assign == "centred" else cos  # centred: per prototype
        expected = vis_drawing.palette(16)[score.argmax(-1).numpy()].reshape(2, 4, 4, 3).repeat(2, axis=0)  # [T, 4, 4, 3]
        assert np.abs(per_tube - expected).max() <= 2.5
    assert len(np.unique(per_tube[0].reshape(-1, 3).round(), axis=0)) > 1  # not one colour everywhere
    gif = [np.asarray(f.convert("RGB"))[:192, 192 + vis_drawing.GAP:] for f in ImageSequence.Iterator(Image.open(
        out / "static_tubes.gif"))]
    assert len(gif) == 4 and all((f == gif[0]).all() for f in gif)


@pytest.mark.e2e
def test_pixel_model_reconstruction_and_kmeans(data, tmp_path):
    _, ckpt = _checkpoint(tmp_path, "pixel")
    out = tmp_path / "out"
    vis.main(["--checkpoint", ckpt, "--video", _video(data), "--output_dir", str(out), "--device", "cpu",
              "--clusters", "3"])
    rec_png = out / "00000_reconstruction.png"
    assert Image.open(rec_png).width == _width(4, 32)
    assert "pixel.pth, after 1 epoch (step 2)" in Image.open(rec_png).text["Title"]
    hidden, rec, original = (_cells(rec_png, r, 4, 32) for r in range(3))
    grey = round(255 * vis_drawing.MASK_GREY)
    masked = (hidden == grey).all(axis=(0, 3))  # [160, 160] pixels hidden in every frame (tube mask)
    assert masked.reshape(2, 80, 2, 80).all(axis=(1, 3)).sum() == 2  # int(0.5 * 4) of the 2 x 2 tubes
    assert (rec[:, ~masked] == original[:, ~masked]).all()  # visible tubes are the input
    assert (hidden[:, ~masked] == original[:, ~masked]).all()
    assert not (rec[:, masked] == original[:, masked]).all()  # masked tubes are predicted
    tubes_png = out / "00000_tubes.png"
    assert Image.open(tubes_png).width == _width(4, 32)
    assert "k-means cluster (3)" in Image.open(tubes_png).text["Title"]
    with pytest.raises(SystemExit):  # usage histogram needs prototypes
        vis.main(["--checkpoint", ckpt, "--csv", os.path.join(data, "pretrain.csv"), "--data_path", data,
                  "--output_dir", str(out), "--device", "cpu"])


class _PerfectPixelModel(torch.nn.Module):
    """Predicts the masked tubes' training targets exactly."""
    tubelet_size, patch_size = 2, 16

    def __init__(self, normalize: bool):
        super().__init__()
        self.normalize = normalize

    def forward(self, videos, mask):
        pred = pixel_targets(patchify(videos, 2, 16), mask, self.normalize)  # [1, N_mask, P*C]
        return modeling_pretrain.PretrainOutput(pred, None, None)


@pytest.mark.parametrize("normalize", [True, False])
def test_perfect_prediction_reconstructs_the_clip(data, normalize):
    frames, _ = vis.read_clip(_video(data), num_frames=4, sampling_rate=2, input_size=32, backend="decord")
    mask = torch.tensor([[True, False, True, True, True, False, True, True]])  # [1, 8]
    hidden, rec, loss = vis.reconstruct(_PerfectPixelModel(normalize), to_normalized_float(frames).unsqueeze(0),
                                        mask, normalize)
    original = frames.permute(0, 2, 3, 1).numpy().astype(int)
    assert loss < 1e-10 and np.abs(rec.astype(int) - original).max() <= 1
    assert (hidden == round(255 * vis_drawing.MASK_GREY)).all(axis=-1).mean() == pytest.approx(6 / 8)


@pytest.mark.e2e
def test_usage_histogram_over_a_csv(data, tmp_path):
    _, ckpt = _checkpoint(tmp_path, num_prototypes=64)
    csv = tmp_path / "list.csv"
    csv.write_text(open(os.path.join(data, "pretrain.csv")).read() + "missing/video.mp4 0\n")
    out = tmp_path / "out"
    argv = ["--checkpoint", ckpt, "--csv", str(csv), "--data_path", data, "--output_dir", str(out), "--device", "cpu"]
    with pytest.raises(ValueError, match=r"scored 3 of 4 listed videos, left out 1: .*missing/video.mp4.*"
                                         r"more than --max_bad_fraction 0.01"):
        vis.main(argv)
    vis.main(argv + ["--max_bad_fraction", "0.5"])
    summary = json.loads((out / "prototype_usage.json").read_text())
    assert summary["videos"] == 3 and summary["skipped"] == [os.path.join(data, "missing/video.mp4")]
    assert summary["tubes"] == sum(summary["counts"]) == 3 * 8 and len(summary["counts"]) == 64
    assert summary["used"] == sum(c > 0 for c in summary["counts"]) <= 24
    counts = summary["counts"]
    order = sorted(range(64), key=lambda k: -counts[k])  # most used first, ties by id (stable)
    assert summary["by_usage"] == order
    png = Image.open(out / "prototype_usage.png")
    assert "mlp.pth, after 1 epoch (step 2)" in png.text["Title"] and "7/64 used" in png.text["Title"]
    img = np.asarray(png.convert("RGB"))
    bottom, top = vis_drawing.PLOT_Y + vis_drawing.PLOT_H - 1, vis_drawing.PLOT_Y
    # Bars sorted by use, in their prototypes' colours, on a log(1 + tubes) axis: a prototype with
    # 1 of 24 tubes would be 15 px tall on a linear axis, log(2) / log(1 + top) of the plot here.
    most = counts[order[0]]
    heights = []
    for rank, k in enumerate(order[:summary["used"]]):
        x = vis_drawing.PLOT_X + rank * vis_drawing.PLOT_W // 64 + 2
        column = (img[:, x] == vis_drawing.palette(64)[k]).all(axis=-1)  # [H] pixels of the bar's colour
        assert column[bottom] and column[top:bottom + 1].sum() >= 1
        heights.append(bottom - int(np.argmax(column)) + 1)
        expected = round((vis_drawing.PLOT_H - 1) * math.log1p(counts[k]) / math.log1p(most)) + 1
        assert abs(heights[-1] - expected) <= 1, (k, counts[k], heights[-1], expected)
    assert heights[0] == vis_drawing.PLOT_H and heights == sorted(heights, reverse=True)
    assert min(heights) > 2 * (vis_drawing.PLOT_H * min(c for c in counts if c) / most)  # taller than linear
    unused_x = vis_drawing.PLOT_X + summary["used"] * vis_drawing.PLOT_W // 64 + 2
    assert (img[vis_drawing.PLOT_Y:bottom, unused_x] != 0).any(axis=-1).sum() > vis_drawing.PLOT_H - 5  # no bar, at most a dash
    assert not (img[vis_drawing.PLOT_Y:bottom, unused_x] == vis_drawing.palette(64)[order[summary["used"]]]).all(axis=-1).any()


def test_labels_are_readable():
    # Pillow's built-in font at its default size 10 renders a space 2 px wide ("sortedbytubes").
    assert vis_drawing.FONT.size >= 13 and vis_drawing.SMALL_FONT.size >= 12
    for font in (vis_drawing.FONT, vis_drawing.SMALL_FONT):
        assert font.getlength("a b") - font.getlength("ab") >= 3
    assert vis_drawing.shown_frames(4) == [0, 1, 2, 3]
    assert vis_drawing.shown_frames(16) == list(range(0, 16, 2))  # one frame per tubelet, 8 columns
    assert len(vis_drawing.shown_frames(64)) == vis_drawing.MAX_COLUMNS
    assert vis_drawing.upscale(np.zeros((2, 224, 224, 3), np.uint8)).shape == (2, 224, 224, 3)
    assert vis_drawing.upscale(np.zeros((2, 48, 48, 3), np.uint8)).shape == (2, 192, 192, 3)


def test_figure_legend_lists_every_id_by_tubes():
    ids = torch.tensor([5, 5, 5, 2, 2, 9, 0, 0])
    legend = vis_drawing.legend_entries(ids)
    assert legend == [(5, 3), (0, 2), (2, 2), (9, 1)]
    frames = np.full((2, 160, 160, 3), 200, np.uint8)
    img = np.asarray(vis_drawing.figure(["title"], [("frames", frames)], ["a", "b"], legend))
    x, y = vis_drawing.legend_origin(1, 160, 1)
    colours, per_line = vis_drawing.palette(10), (img.shape[1] - vis_drawing.LABEL_W) // vis_drawing.LEGEND_W
    assert per_line == 2  # two 160 px tiles: two entries per legend line
    for i, (k, _) in enumerate(legend):
        swatch = img[y + (i // per_line) * vis_drawing.LINE_H + 2 + vis_drawing.FONT_SIZE // 2,
                     x + (i % per_line) * vis_drawing.LEGEND_W + vis_drawing.FONT_SIZE // 2]
        assert (swatch == colours[k]).all(), (k, swatch)
    # Ids are written on tubes only where they fit: 80 px cells get "7", 32 px cells not "255".
    for cell, k, written in ((80, 7, True), (32, 255, False)):
        ids = np.full((2, 160 // cell, 160 // cell), k)
        img = np.asarray(vis_drawing.figure(["title"], [("ids", frames)], ["a", "b"], cell_ids=(0, ids)))
        x, y = vis_drawing.tile_origin(0, 0, 160, 1)
        assert (img[y:y + 160, x:x + 160] == 0).all(axis=-1).any() == written
    many = vis_drawing.legend_entries(torch.arange(100))
    img = vis_drawing.figure(["title"], [("frames", frames)], ["a", "b"], many)
    assert img.height > vis_drawing.legend_origin(1, 160, 1)[1] + 2 * vis_drawing.LINE_H  # several legend lines


@pytest.mark.e2e
def test_dino_prototypes_with_a_teacher(data, tmp_path, monkeypatch):
    _, ckpt = _checkpoint(tmp_path, "dino_v1")
    calls = []
    monkeypatch.setattr(vis, "build_teacher", lambda *a: calls.append(a) or tiny_teacher("dino_v1"))
    out = tmp_path / "out"
    vis.main(["--checkpoint", ckpt, "--video", _video(data), "--output_dir", str(out), "--device", "cpu",
              "--teacher_ckpt", "dino.pth"])
    assert calls and calls[0][:4] == ("dino_v1", "dino_s", 32, "dino.pth")
    assert Image.open(out / "00000_tubes.png").width == _width(4, 32)


@pytest.mark.e2e
def test_unreadable_inputs_name_the_file(data, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        vis.main(["--checkpoint", str(garbage), "--video", _video(data), "--device", "cpu"])
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=1.0)}, pickled)  # needs unpickling code
    with pytest.raises(CheckpointError, match="pickled.pth"):
        vis.main(["--checkpoint", str(pickled), "--video", _video(data), "--device", "cpu"])
    _, ckpt = _checkpoint(tmp_path)
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(os.urandom(2048))
    with pytest.raises(VideoError, match="bad.mp4"):
        vis.main(["--checkpoint", ckpt, "--video", str(bad_video), "--output_dir", str(tmp_path), "--device", "cpu"])
    with pytest.raises(CheckpointError, match="pixel"):  # weights of an mlp model, flags of a pixel model
        vis.main(["--checkpoint", ckpt, "--video", _video(data), "--target_type", "pixel", "--device", "cpu",
                  "--output_dir", str(tmp_path)])


def test_unpatchify_inverts_patchify():
    x = torch.randn(2, 3, 4, 32, 48)
    torch.testing.assert_close(vis.unpatchify(patchify(x, 2, 16), (2, 2, 3), 2, 16), x, rtol=0, atol=0)


def test_kmeans_finds_separated_clusters():
    centres = torch.eye(3) * 10
    x = torch.cat([centres[i] + 0.1 * torch.randn(20, 3) for i in range(3)])
    labels, _ = kmeans(x, 3, restarts=1, iters=20, generator=torch.Generator().manual_seed(0))  # what vis uses
    groups = labels.reshape(3, 20)
    assert all(len(g.unique()) == 1 for g in groups) and len(groups[:, 0].unique()) == 3
