"""The pictures of run_sigma_vis.py: colours, figures of labelled frame rows, the GIF and the
usage histogram, drawn with PIL from uint8 frames (nothing here touches a model)."""
import colorsys
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

OVERLAY_ALPHA = 0.5  # weight of the prototype colour over the frame
MASK_GREY = 0.5  # masked tubes in the masked-input row
GAP, LABEL_W, CAPTION_H = 4, 150, 22  # px between frames, of the row-label column, of the GIF caption strip
MIN_TILE = 160  # px: smaller clips are shown enlarged (nearest neighbour), so every tube is visible
MAX_COLUMNS = 8  # frames shown per row of a PNG; longer clips show every n-th frame (the GIF has all)
CELL_LABEL_MIN = 28  # px: tubes this large (and wide enough for the id) get their prototype id written on them
LEGEND_W, LEGEND_MAX = 150, 48  # px per legend entry; entries listed (most tubes first)
FONT_SIZE = 16
GIF_FRAME_MS = 250
PLOT_X, PLOT_Y, PLOT_W, PLOT_H, MARGIN = 90, 100, 1200, 360, 24  # usage histogram: plot area origin and size


def palette(k: int) -> np.ndarray:
    """[k, 3] uint8 colours; colour i does not depend on k, and consecutive ids differ in hue."""
    colours = [colorsys.hsv_to_rgb((i * 0.6180339887) % 1.0,  # golden-ratio hue steps
                                   0.55 + 0.45 * ((i * 0.7548776662) % 1.0),  # R2 low-discrepancy sequence
                                   0.70 + 0.30 * ((i * 0.5698402910) % 1.0)) for i in range(k)]
    return (np.asarray(colours) * 255).round().astype(np.uint8)


def tube_colours(ids: torch.Tensor, grid: Tuple[int, int, int], tubelet: int, patch: int) -> np.ndarray:
    """[N] ids in (t, h, w) token order -> per-pixel colours uint8 [T, H, W, 3]."""
    cells = ids.reshape(grid).cpu()  # [T/t, H/p, W/p]
    pixels = cells.repeat_interleave(tubelet, 0).repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    return palette(int(ids.max()) + 1)[pixels.numpy()]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[C, T, H, W] floats in [0, 1] -> uint8 [T, H, W, C]."""
    return video.permute(1, 2, 3, 0).mul(255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans where installed (most Linux systems); else Pillow's own font, whose spaces are narrow."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


FONT, SMALL_FONT = _font(FONT_SIZE), _font(FONT_SIZE - 3)
LINE_H = FONT_SIZE + 6  # px per text line


def shown_frames(num_frames: int) -> List[int]:
    """Positions of the clip's frames shown as columns: all, or evenly strided down to MAX_COLUMNS."""
    return list(range(0, num_frames, math.ceil(num_frames / MAX_COLUMNS)))


def upscale(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, S, S, 3] -> [T, S*f, S*f, 3], nearest neighbour by the integer f that makes tiles >= MIN_TILE."""
    factor = max(1, math.ceil(MIN_TILE / frames.shape[1]))
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def tile_origin(row: int, col: int, tile: int, title_lines: int) -> Tuple[int, int]:
    """Top-left pixel of frame `col` of row `row` in a `figure` with `title_lines` title lines."""
    return LABEL_W + col * (tile + GAP), (title_lines + 1) * LINE_H + row * (tile + GAP)


def legend_origin(rows: int, tile: int, title_lines: int) -> Tuple[int, int]:
    """Top-left pixel of the first legend entry (its swatch) of a `figure`."""
    return LABEL_W, tile_origin(rows, 0, tile, title_lines)[1] + LINE_H // 2


def legend_entries(ids: torch.Tensor) -> List[Tuple[int, int]]:
    """(id, tubes) for the ids of one clip, most tubes first (ties: lower id first)."""
    counts = torch.bincount(ids.flatten().cpu())
    order = torch.argsort(counts, descending=True, stable=True)
    return [(int(k), int(counts[k])) for k in order if counts[k] > 0]


def figure(title: Sequence[str], rows: Sequence[Tuple[str, np.ndarray]], captions: Sequence[str],
           legend: Sequence[Tuple[int, int]] = (), legend_name: str = "prototype",
           cell_ids: Optional[Tuple[int, np.ndarray]] = None) -> Image.Image:
    """Title lines, one labelled row of square tiles per (label, uint8 [T, S, S, 3]), a caption above
    each column, and a legend: the palette colour of each (id, tubes) with "legend_name id: tubes".

    cell_ids: (row, [T, H/p, W/p] ids) writes each tube's id into its cell when the cells are large enough.
    """
    T, tile = rows[0][1].shape[:2]
    width = max(LABEL_W + T * tile + (T - 1) * GAP, 2 * LABEL_W + LEGEND_W)
    per_line = max(1, (width - LABEL_W) // LEGEND_W)
    shown = list(legend[:LEGEND_MAX])
    legend_lines = math.ceil(len(shown) / per_line) + (len(legend) > len(shown))
    top = tile_origin(0, 0, tile, len(title))[1]
    height = top + len(rows) * (tile + GAP) + (legend_lines + bool(legend)) * LINE_H
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title):
        draw.text((4, 4 + i * LINE_H), line, fill="black", font=FONT)
    for c, caption in enumerate(captions):
        draw.text((LABEL_W + c * (tile + GAP), top - 2), caption, fill="black", anchor="ld", font=SMALL_FONT)
    for r, (label, frames) in enumerate(rows):
        draw.text((4, tile_origin(r, 0, tile, len(title))[1] + tile // 2), label, fill="black", anchor="lm",
                  font=FONT)
        for c, frame in enumerate(frames):
            canvas.paste(Image.fromarray(frame), tile_origin(r, c, tile, len(title)))
    if cell_ids is not None:
        row, ids = cell_ids
        cell = tile // ids.shape[-1]
        if cell >= max(CELL_LABEL_MIN, SMALL_FONT.getlength(str(ids.max())) + 12):  # room for the id and a margin
            for c in range(T):
                x0, y0 = tile_origin(row, c, tile, len(title))
                for (h, w), k in np.ndenumerate(ids[c]):
                    draw.text((x0 + w * cell + cell // 2, y0 + h * cell + cell // 2), str(k), fill="black",
                              anchor="mm", font=SMALL_FONT, stroke_width=2, stroke_fill="white")
    colours = palette(max((k for k, _ in legend), default=0) + 1)
    x0, y = legend_origin(len(rows), tile, len(title))
    for i, (k, tubes) in enumerate(shown):
        x, yy = x0 + (i % per_line) * LEGEND_W, y + (i // per_line) * LINE_H
        draw.rectangle([x, yy + 2, x + FONT_SIZE, yy + 2 + FONT_SIZE], fill=tuple(int(v) for v in colours[k]),
                       outline="black")
        draw.text((x + FONT_SIZE + 4, yy), f"{legend_name} {k}: {tubes}", fill="black", font=SMALL_FONT)
    if len(legend) > len(shown):
        rest = sum(tubes for _, tubes in legend[LEGEND_MAX:])
        draw.text((x0, y + (legend_lines - 1) * LINE_H),
                  f"+ {len(legend) - len(shown)} more ids with {rest} tubes in all", fill="black", font=SMALL_FONT)
    if legend:
        draw.text((4, y), "legend", fill="black", font=FONT)
    return canvas


def save_png(img: Image.Image, path: str, title: Sequence[str]) -> None:
    """PNG with the title also in its "Title" text chunk (readable by image viewers and tests)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", " | ".join(title))
    img.save(path, pnginfo=info)


def save_gif(original: np.ndarray, overlay: np.ndarray, indices: Sequence[int], path: str) -> None:
    """original | overlay per sampled frame, with a caption strip (which also keeps PIL from merging
    identical frames); one palette for all frames, no dithering, so a colour never flickers."""
    original, overlay = upscale(original), upscale(overlay)
    T, H, W = original.shape[:3]
    frames = []
    for i in range(T):
        frame = Image.new("RGB", (2 * W + GAP, H + CAPTION_H), "white")
        frame.paste(Image.fromarray(original[i]), (0, 0))
        frame.paste(Image.fromarray(overlay[i]), (W + GAP, 0))
        ImageDraw.Draw(frame).text((2, H + 2), f"{i + 1}/{T} (frame {indices[i]})", fill="black", font=SMALL_FONT)
        frames.append(frame)
    strip = Image.new("RGB", (frames[0].width, frames[0].height * T))
    for i, frame in enumerate(frames):
        strip.paste(frame, (0, i * frames[0].height))
    shared = strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    frames = [f.quantize(palette=shared, dither=Image.Dither.NONE) for f in frames]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0)


def bar_top(count: float, top: int) -> int:
    """y pixel of the top of a bar of `count` tubes on the usage plot's log axis (log(1 + count))."""
    bottom = PLOT_Y + PLOT_H - 1
    return bottom - round((PLOT_H - 1) * math.log1p(count) / math.log1p(max(top, 1)))


def usage_plot(counts: torch.Tensor, title: Sequence[str]) -> Image.Image:
    """Sorted bar chart of tubes per prototype on a log axis, each bar in its prototype's overlay
    colour, with the prototype id under the bar where it fits, and the uniform share as a line."""
    K = counts.numel()
    order = torch.argsort(counts, descending=True, stable=True).tolist()
    top, colours = max(int(counts.max()), 1), palette(K)
    img = Image.new("RGB", (PLOT_X + PLOT_W + MARGIN, PLOT_Y + PLOT_H + 3 * LINE_H + MARGIN), "white")
    draw = ImageDraw.Draw(img)
    bottom = PLOT_Y + PLOT_H - 1
    label_ids = PLOT_W / K >= SMALL_FONT.getlength(str(K - 1)) + 2
    uniform = int(counts.sum()) / K
    y = bar_top(uniform, top)
    for x in range(PLOT_X, PLOT_X + PLOT_W, 8):  # dashed, behind the bars: visible where use is below uniform
        draw.line([(x, y), (x + 3, y)], fill="black")
    draw.text((PLOT_X + PLOT_W, y - 2), f"uniform ({uniform:.3g} each)", fill="black", anchor="rd", font=SMALL_FONT)
    for rank, k in enumerate(order):
        if counts[k] == 0:
            break
        x0 = PLOT_X + rank * PLOT_W // K
        x1 = max(x0, PLOT_X + (rank + 1) * PLOT_W // K - 1 - (PLOT_W >= 3 * K))  # 1 px apart when wide
        draw.rectangle([x0, bar_top(int(counts[k]), top), x1, bottom], fill=tuple(int(c) for c in colours[k]))
        if label_ids:
            draw.text(((x0 + x1) // 2, bottom + 4), str(k), fill="black", anchor="ma", font=SMALL_FONT)
    # Log ticks at the largest count, then ..., 100, 10, 1, 0 where their labels do not overlap.
    last_y = None
    for tick in [top] + [10 ** e for e in range(int(math.log10(top)), -1, -1)] + [0]:
        y = bar_top(tick, top)
        if last_y is not None and y - last_y < FONT_SIZE:
            continue
        draw.line([(PLOT_X - 5, y), (PLOT_X - 1, y)], fill="black")
        draw.text((PLOT_X - 7, y), str(tick), fill="black", anchor="rm", font=SMALL_FONT)
        last_y = y
    draw.line([(PLOT_X - 1, PLOT_Y), (PLOT_X - 1, bottom + 1), (PLOT_X + PLOT_W, bottom + 1)], fill="black")
    draw.text((PLOT_X - 7, PLOT_Y - 8), "tubes (log)", fill="black", anchor="rd", font=SMALL_FONT)
    for i, line in enumerate(title):
        draw.text((8, 6 + i * LINE_H), line, fill="black", font=FONT)
    used = int((counts > 0).sum())
    draw.text((PLOT_X + PLOT_W // 2, bottom + 2 * LINE_H),
              f"prototypes sorted by tubes assigned, most used first: {used} used, {K - used} unused"
              + ("" if label_ids else " (ids in prototype_usage.json)"), fill="black", anchor="mm", font=FONT)
    return img
