"""Pictures of what a SIGMA / VideoMAE checkpoint learned, from local files only.

    python run_sigma_vis.py --checkpoint output/demo/checkpoint-latest.pth --video data/demo/val/x/00000.mp4 \\
        --csv data/demo/val.csv --data_path data/demo --output_dir output/vis

writes to --output_dir:
    {video}_tubes.png           sampled frames (top row) and the same frames with every space-time tube
                                coloured by its prototype (bottom row); prototype i always has the same colour;
                                a legend lists the clip's prototype ids by tubes, large tubes carry their id
    {video}_tubes.gif           the overlay over time, original | overlay
    {video}_tubes.json          the same ids as numbers: "ids" [T/tubelet][H/patch][W/patch], "frame_indices"
    {video}_reconstruction.png  pixel models: masked input / reconstruction / original
    prototype_usage.png, .json  --csv: tubes per prototype over the listed videos, sorted, on a log axis
    vis_config.json             the resolved settings
Titles (also in each PNG's "Title" text chunk) name the checkpoint, its epoch and step, and the video.
Clips under MIN_TILE pixels are enlarged; at most MAX_COLUMNS frames are shown per PNG row (vis_drawing.py).
Architecture flags default to the "config" saved in the checkpoint by run_sigma_pretraining.py;
official checkpoints carry none, so give them on the command line.
"""
import argparse
import json
import logging
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpointing import CheckpointError, state_dict_from
from datasets.annotations import AnnotationError, read_annotations
from datasets.decoding import BACKENDS, VideoError, read_video
from datasets.frame_indices import dense_indices
from datasets.transforms import center_crop, resize_short_side, to_normalized_float
from distributed import setup_logging
from engine_for_pretraining import Objective, denormalize_like, pixel_targets
from evals.common import account_scored, add_scoring_flags
from evals.kmeans import kmeans
from flags import ArgumentParser, DocHelpFormatter, str2bool
from masking_generator import tube_mask
from modeling_finetune import MaskIndex, patchify
from modeling_pretrain import MODELS, TARGET_TYPES, TEACHER_DIMS, PretrainVisionTransformer
from pretrain_flags import build_parser as build_pretrain_parser
from shutdown import describe
from vis_drawing import (MASK_GREY, OVERLAY_ALPHA, figure, legend_entries, save_gif, save_png, shown_frames, to_uint8,
                         tube_colours, upscale, usage_plot)
from weights import build_teacher, read_pretrained

logger = logging.getLogger("sigma.vis")

# Flags whose default is the checkpoint's saved run config when it has one.
CONFIG_KEYS = ("model", "target_type", "num_prototypes", "input_size", "num_frames", "sampling_rate", "mask_ratio",
               "normalize_target", "distillation_teacher", "teacher_ckpt", "sinkhorn_eps", "sinkhorn_iterations",
               "video_backend")
KMEANS_ITERATIONS = 50


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("run_sigma_vis.py", __doc__, formatter_class=DocHelpFormatter)
    pretrain = build_pretrain_parser()  # the pretraining defaults, declared once there (pretrain_flags.py)
    g = p.add_argument_group("inputs")
    g.add_argument("--checkpoint", required=True, help="pretraining checkpoint (loaded with weights_only)")
    g.add_argument("--video", default="",
                   help="video for the tube overlay and the reconstruction figures (default: none, give it or --csv)")
    g.add_argument("--csv", default="",
                   help="annotation list (`path label` lines) for the usage histogram (default: none, no histogram)")
    g.add_argument("--data_path", default="", help="root for relative paths in --csv (default: the current folder)")
    g.add_argument("--max_videos", type=int, default=200, help="videos of --csv to use; 0: all")
    add_scoring_flags(g)
    g.add_argument("--video_backend", default=pretrain.get_default("video_backend"), choices=BACKENDS,
                   help="video decoder")
    g = p.add_argument_group("model (default: the checkpoint's config, else the pretraining default)")
    g.add_argument("--model", default=pretrain.get_default("model"), choices=sorted(MODELS), help="encoder size")
    g.add_argument("--target_type", default=pretrain.get_default("target_type"), choices=TARGET_TYPES,
                   help="what the model was trained to predict (run_sigma_pretraining.py)")
    g.add_argument("--num_prototypes", type=int, default=None, help="prototypes (default: rows of the checkpoint's)")
    g.add_argument("--normalize_target", type=str2bool, default=pretrain.get_default("normalize_target"),
                   help="per-tube target normalisation the model was trained with")
    g.add_argument("--distillation_teacher", default=pretrain.get_default("distillation_teacher"),
                   choices=sorted(TEACHER_DIMS), help="the DINO image model of dino_* targets")
    g.add_argument("--teacher_ckpt", default="",
                   help="local DINO weights (default: none; dino_* targets need the teacher)")
    g.add_argument("--sinkhorn_eps", type=float, default=pretrain.get_default("sinkhorn_eps"),
                   help="entropy regularisation of --assign sinkhorn")
    g.add_argument("--sinkhorn_iterations", type=int, default=pretrain.get_default("sinkhorn_iterations"),
                   help="iterations of --assign sinkhorn")
    g = p.add_argument_group("clip")
    g.add_argument("--input_size", type=int, default=pretrain.get_default("input_size"),
                   help="side of the square crop given to the model")
    g.add_argument("--num_frames", type=int, default=pretrain.get_default("num_frames"), help="frames per clip")
    g.add_argument("--sampling_rate", type=int, default=pretrain.get_default("sampling_rate"),
                   help="the centre window of the video is shown")
    g.add_argument("--mask_ratio", type=float, default=pretrain.get_default("mask_ratio"),
                   help="tube mask of the reconstruction figure")
    g = p.add_argument_group("assignment")
    g.add_argument("--assign", default="centred", choices=["centred", "argmax", "sinkhorn"],
                   help="models with prototypes: a tube's prototype is the argmax of the cosines between its "
                        "projection (MLP head or DINO teacher, all tubes, no masking) and the L2-normalised "
                        "prototypes, each prototype's cosines centred on their mean over the clip (centred: "
                        "what sets a tube apart from the rest of its clip), taken as they are (argmax), or of "
                        "the clip's balanced Sinkhorn codes (sinkhorn); the usage histogram always uses the "
                        "raw argmax (anything balanced would hide a collapse)")
    g.add_argument("--clusters", type=int, default=8,
                   help="models without prototypes (VideoMAE pixel): tubes are coloured by k-means with this "
                        "many clusters on the encoder features of all tokens (encoder run without masking)")
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default="output/vis", help="where the pictures go")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cuda:N or cpu (the default is cuda where there is one)")
    g.add_argument("--seed", type=int, default=0, help="reconstruction mask and k-means initialisation")
    return p


def read_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], str]:
    """(state dict, saved run config or {}, "name, after E epochs (step S)" for titles) of a checkpoint;
    never unpickles code (weights_only). E is the saved "epoch": epochs completed (checkpoint-{E-1}.pth
    is written at the end of epoch E-1, counted from 0 as log.txt counts them)."""
    state = read_pretrained(path).checkpoint  # also transformers / exported SIGMA folders, in our names
    if not isinstance(state, dict):
        raise CheckpointError(path, f"expected a dict, got {type(state).__name__}")
    weights = state_dict_from(state, path, "model|module")
    if "decoder.head.weight" not in weights:
        raise CheckpointError(path, "not a pretraining checkpoint: it has no decoder")
    config = state.get("config")
    name, epochs = os.path.basename(path), state.get("epoch")
    if isinstance(epochs, int):
        name += f", after {epochs} epoch{'' if epochs == 1 else 's'}"
        name += f" (step {state['step']})" if isinstance(state.get("step"), int) else ""
    else:
        name += " (no epoch recorded)"
    return weights, config if isinstance(config, dict) else {}, name


def build_model(weights: Dict[str, torch.Tensor], checkpoint: str, *, model_name: str, target_type: str,
                num_prototypes: Optional[int], input_size: int, num_frames: int) -> PretrainVisionTransformer:
    """The model of `weights` (prototypes on the unit sphere); decoder depth and width and the loss
    are read from the weights."""
    kwargs = dict(img_size=input_size, all_frames=num_frames, target_type=target_type,
                  decoder_num_classes=weights["decoder.head.weight"].shape[0],
                  decoder_depth=1 + max(int(k.split(".")[2]) for k in weights if k.startswith("decoder.blocks.")))
    if "prototypes" in weights:
        kwargs.update(loss_func="SWAV", num_prototypes=num_prototypes or weights["prototypes"].shape[0])
    else:
        kwargs.update(loss_func="L2")
    try:
        model = MODELS[model_name](**kwargs)
        model.load_state_dict(weights)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(checkpoint, f"its weights do not fit --model {model_name} --target_type {target_type}: "
                                          f"{str(e)[:600]}") from None
    if hasattr(model, "prototypes"):
        model.normalize_prototypes()  # as every training forward does before scoring
    return model.eval()


def read_clip(path: str, *, num_frames: int, sampling_rate: int, input_size: int,
              backend: str) -> Tuple[torch.Tensor, List[int]]:
    """The centre window of `path`, short side resized and centre-cropped: (uint8 [T, C, S, S], frame indices)."""
    def centre_window(reader):
        indices = dense_indices(reader.num_frames, num_frames, sampling_rate, "val")
        return reader.get_frames(indices), indices  # [T, C, H, W]

    frames, indices = read_video(path, backend, centre_window)
    return center_crop(resize_short_side(frames, input_size, antialias=True), input_size), indices


@torch.no_grad()
def prototype_scores(model: PretrainVisionTransformer, objective: Objective, videos: torch.Tensor,
                     teacher: Optional[nn.Module]) -> torch.Tensor:
    """Cosines between the projection of every tube and every prototype: [B, N, K].

    The projection side of the objective on all tubes (no mask): the MLP head of the normalised
    pixel tubes (SIGMA-MLP) or the frozen teacher's features (SIGMA-DINO, whose head is Identity).
    """
    tubes = patchify(videos, objective.tubelet_size, objective.patch_size)  # [B, N, P, C]
    every = MaskIndex.of(torch.ones(tubes.shape[:2], dtype=torch.bool, device=videos.device))  # all masked
    if objective.target_type != "mlp" and teacher is None:
        raise ValueError(f"target_type {objective.target_type} needs its teacher: give --teacher_ckpt")
    targets = objective.targets(videos, tubes, every, teacher)  # [B, N, D_t]
    with torch.no_grad():
        scores = model.prototype_logits(model.project(targets).flatten(0, 1), temperature=1.0)  # [B*N, K]
    return scores.reshape(tubes.shape[0], tubes.shape[1], -1)


def assign_prototypes(scores: torch.Tensor, method: str, objective: Objective) -> torch.Tensor:
    """[N, K] cosines of one clip -> [N] prototype ids: argmax of the cosines centred per prototype
    over the clip, of the raw cosines, or of the clip's Sinkhorn codes.

    Centring subtracts each prototype's mean cosine over the clip's tubes (in log space, the
    prototype-marginal step Sinkhorn starts with, without forcing equal use): a prototype that every
    tube scores high on (early in training, the one the raw argmax paints everywhere) no longer
    wins everywhere, and a tube takes the prototype it prefers more than the rest of the clip does.
    """
    if method == "centred":
        scores = scores - scores.mean(0, keepdim=True)  # [N, K]
    elif method == "sinkhorn":
        scores = objective.codes(scores / objective.temperature)
    return scores.argmax(-1)


def unpatchify(tubes: torch.Tensor, grid: Tuple[int, int, int], tubelet: int, patch: int) -> torch.Tensor:
    """Inverse of `patchify`: [B, N, t*p*p, C] -> [B, C, T, H, W]."""
    B, C = tubes.shape[0], tubes.shape[-1]
    T_, H_, W_ = grid
    x = tubes.reshape(B, T_, H_, W_, tubelet, patch, patch, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, T/t, t, H/p, p, W/p, p]
    return x.reshape(B, C, T_ * tubelet, H_ * patch, W_ * patch)


@torch.no_grad()
def reconstruct(model: PretrainVisionTransformer, videos: torch.Tensor, mask: torch.Tensor,
                normalize_target: bool) -> Tuple[np.ndarray, np.ndarray, float]:
    """(masked input, reconstruction) as uint8 [T, H, W, 3] and the loss on the masked tubes.

    With normalize_target the model predicts every masked tube normalised per channel, so the
    prediction is mapped back with that tube's true mean and std, as VideoMAE's visualisation
    does: the reconstruction borrows each masked tube's mean colour and contrast from the original.
    """
    t, p = model.tubelet_size, model.patch_size
    grid = (videos.shape[2] // t, videos.shape[3] // p, videos.shape[4] // p)
    tubes = patchify(videos, t, p)  # [1, N, P, C] ImageNet-normalised
    every = torch.ones(tubes.shape[:2], dtype=torch.bool, device=tubes.device)
    pixels = pixel_targets(tubes, every, normalize=False).reshape(tubes.shape)  # [1, N, P, C] in [0, 1]
    pred = model(videos, mask).pred.float()  # [1, N_mask, P*C]
    loss = F.mse_loss(pred, pixel_targets(tubes, mask, normalize_target)).item()
    masked = pixels[mask]  # [N_mask, P, C]
    pred = pred.reshape(masked.shape)
    if normalize_target:
        pred = denormalize_like(pred, masked, dim=-2)
    rec, hidden = pixels.clone(), pixels.clone()
    rec[mask] = pred.clamp(0, 1)  # visible tubes keep their pixels
    hidden[mask] = MASK_GREY
    return (to_uint8(unpatchify(hidden, grid, t, p)[0]), to_uint8(unpatchify(rec, grid, t, p)[0]), loss)


def visualise_video(model: PretrainVisionTransformer, teacher: Optional[nn.Module], path: str, out_dir: str, *,
                    clip: Dict[str, Any], device: torch.device, assign: str, clusters: int, mask_ratio: float,
                    objective: Objective, seed: int, checkpoint: str) -> List[str]:
    """Figures (a) to (c) of one video; `checkpoint` heads their titles. Returns the written paths."""
    frames, indices = read_clip(path, **clip)  # uint8 [T, C, S, S]
    videos = to_normalized_float(frames).unsqueeze(0).to(device)  # [1, 3, T, S, S]
    t, p = model.tubelet_size, model.patch_size
    grid = (videos.shape[2] // t, videos.shape[3] // p, videos.shape[4] // p)
    generator = torch.Generator().manual_seed(seed)
    if hasattr(model, "prototypes"):
        scores = prototype_scores(model, objective, videos, teacher)[0]  # [N, K]
        ids = assign_prototypes(scores, assign, objective)  # [N]
        label, name = "prototypes", "prototype"
        source = {"sinkhorn": "the clip's balanced Sinkhorn codes", "argmax": "the raw cosines",
                  "centred": "the cosines centred per prototype over the clip"}[assign]
        how = (f"tube colour = prototype, argmax of {source}; "
               f"{ids.unique().numel()} of {scores.shape[-1]} prototypes in this clip")
    else:
        with torch.no_grad():
            feats = model.encoder.forward_tokens(videos)[0]  # [N, D], every token visible
        if not 0 < clusters <= feats.shape[0]:
            raise ValueError(f"--clusters must lie in [1, {feats.shape[0]}] (the clip's tokens), got {clusters}")
        ids, _ = kmeans(F.normalize(feats.float().cpu(), dim=-1), clusters, restarts=1, iters=KMEANS_ITERATIONS,
                        generator=generator)  # spherical: on unit features
        label, name = f"k-means {clusters}", "cluster"
        how = f"tube colour = k-means cluster ({clusters}) of the encoder features (no prototypes in this model)"
    logger.info("%s: %d tubes, %d distinct ids (%s)", path, ids.numel(), ids.unique().numel(), label)
    original = frames.permute(0, 2, 3, 1).numpy()  # [T, S, S, 3]
    colours = tube_colours(ids, grid, t, p).astype(np.float32)
    overlay = ((1 - OVERLAY_ALPHA) * original + OVERLAY_ALPHA * colours).round().astype(np.uint8)
    stem = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
    cols = shown_frames(original.shape[0])
    captions = [f"frame {indices[c]}" for c in cols]
    head = f"{checkpoint} | {os.path.basename(path)} | {model.target_type} targets"
    title = [head, how]
    cell_ids = ids.reshape(grid).cpu().numpy().repeat(t, axis=0)[cols]  # [columns, H/p, W/p]
    big_original = upscale(original[cols])
    save_png(figure(title, [("frames", big_original), (label, upscale(overlay[cols]))], captions,
                    legend_entries(ids), name, cell_ids=(1, cell_ids)), f"{stem}_tubes.png", title)
    save_gif(original, overlay, indices, f"{stem}_tubes.gif")
    with open(f"{stem}_tubes.json", "w") as f:  # the picture as numbers, for scripts and the docs test
        json.dump({"video": path, "frame_indices": [int(i) for i in indices], "tubelet": t, "patch": p,
                   "grid": list(grid), "how": how, "ids": ids.reshape(grid).tolist()}, f)
    written = [f"{stem}_tubes.png", f"{stem}_tubes.gif", f"{stem}_tubes.json"]
    if model.target_type == "pixel":
        mask = tube_mask(1, grid, mask_ratio, generator=generator).to(device)  # [1, N]
        hidden, rec, loss = reconstruct(model, videos, mask, objective.normalize_target)
        title = [head, f"reconstruction of {mask_ratio:.0%} masked tubes (grey); loss on them {loss:.4f}"]
        save_png(figure(title, [(f"masked {mask_ratio:.0%}", upscale(hidden[cols])),
                                ("reconstruction", upscale(rec[cols])), ("original", big_original)], captions),
                 f"{stem}_reconstruction.png", title)
        logger.info("reconstruction loss on the masked tubes: %.4f", loss)
        written.append(f"{stem}_reconstruction.png")
    return written


def prototype_usage(model: PretrainVisionTransformer, teacher: Optional[nn.Module], paths: Sequence[str],
                    out_dir: str, *, clip: Dict[str, Any], device: torch.device,
                    objective: Objective, checkpoint: str, max_bad_fraction: float) -> Dict[str, Any]:
    """Argmax prototype of every tube of every readable video: histogram PNG and JSON summary;
    `checkpoint` heads the plot's title. Unreadable videos are left out and named; above
    `max_bad_fraction` of the list, ValueError."""
    counts = torch.zeros(model.prototypes.shape[0], dtype=torch.long)
    read, reasons = [], {}
    for i, path in enumerate(paths):
        try:
            frames, _ = read_clip(path, **clip)
        except VideoError as e:
            reasons[path] = e.reason
            continue
        read.append(i)
        videos = to_normalized_float(frames).unsqueeze(0).to(device)
        ids = prototype_scores(model, objective, videos, teacher)[0].argmax(-1)  # [N]
        counts += torch.bincount(ids.cpu(), minlength=counts.numel())
    used = len(read)
    if used == 0:
        raise ValueError(f"none of the {len(paths)} videos of --csv could be read; e.g. "
                         + "; ".join(f"{p}: {r}" for p, r in list(reasons.items())[:3]))
    try:
        scoring = account_scored(list(paths), torch.tensor(read), "--csv", max_bad_fraction, reasons)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    skipped = scoring["left_out"]
    freq = counts.double() / counts.sum()
    summary = {"videos": used, "listed": len(paths), "skipped": skipped, "tubes": int(counts.sum()),
               "num_prototypes": counts.numel(),
               "used": int((counts > 0).sum()), "entropy_nats": float(torch.special.entr(freq).sum()),
               "counts": counts.tolist(), "by_usage": torch.argsort(counts, descending=True, stable=True).tolist()}
    text = (f"prototype usage over {used} of {len(paths)} videos ({summary['tubes']} tubes, argmax of raw cosines): "
            f"{summary['used']}/{counts.numel()} used, entropy {summary['entropy_nats']:.2f} nats "
            f"(uniform {math.log(counts.numel()):.2f})")
    top = ", ".join(f"{k} ({int(counts[k]) / summary['tubes']:.0%})" for k in summary["by_usage"][:8]
                    if counts[k] > 0)
    title = [checkpoint, text, f"most used: {top}"]
    save_png(usage_plot(counts, title), os.path.join(out_dir, "prototype_usage.png"), title)
    with open(os.path.join(out_dir, "prototype_usage.json"), "w") as f:
        json.dump(summary, f)
    logger.info(text)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    setup_logging(0)
    parser = get_parser()
    args = parser.parse_args(argv)
    if not args.video and not args.csv:
        parser.error("give --video, --csv or both")
    weights, config, checkpoint = read_checkpoint(args.checkpoint)
    # Second parse: the saved run config replaces the parser's defaults, explicit flags still win.
    parser.set_defaults(**{k: config[k] for k in CONFIG_KEYS if k in config})
    args = parser.parse_args(argv)
    if args.model not in MODELS or args.target_type not in TARGET_TYPES:
        parser.error(f"{args.checkpoint} was trained with --model {args.model} --target_type {args.target_type}, "
                     f"which this code base does not define")
    device = torch.device(args.device)
    model = build_model(weights, args.checkpoint, model_name=args.model, target_type=args.target_type,
                        num_prototypes=args.num_prototypes, input_size=args.input_size,
                        num_frames=args.num_frames).to(device)
    objective = Objective.of(model, sinkhorn_eps=args.sinkhorn_eps, sinkhorn_iterations=args.sinkhorn_iterations,
                             normalize_target=args.normalize_target)
    if args.csv and not hasattr(model, "prototypes"):
        parser.error(f"--csv: prototype usage needs a model with prototypes; {args.checkpoint} has none")
    teacher = None
    if args.target_type.startswith("dino") and hasattr(model, "prototypes"):
        teacher = build_teacher(args.target_type, args.distillation_teacher, args.input_size, args.teacher_ckpt,
                                model.patch_size).to(device)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "vis_config.json"), "w") as f:
        json.dump({**vars(args), "loss_func": "SWAV" if hasattr(model, "prototypes") else "L2"}, f, indent=2)
    clip = dict(num_frames=args.num_frames, sampling_rate=args.sampling_rate, input_size=args.input_size,
                backend=args.video_backend)
    if args.video:
        written = visualise_video(model, teacher, args.video, args.output_dir, clip=clip, device=device,
                                  assign=args.assign, clusters=args.clusters, mask_ratio=args.mask_ratio,
                                  objective=objective, seed=args.seed, checkpoint=checkpoint)
        logger.info("wrote %s", ", ".join(written))
    if args.csv:
        samples = read_annotations(args.csv, args.data_path, with_labels=False)
        paths = [s.path for s in samples][:args.max_videos or None]
        prototype_usage(model, teacher, paths, args.output_dir, clip=clip, device=device,
                        objective=objective, checkpoint=checkpoint, max_bad_fraction=args.max_bad_fraction)


if __name__ == "__main__":
    try:
        main()
    except VideoError as e:
        sys.exit(f"run_sigma_vis.py: error: cannot read video {e}")
    except (CheckpointError, AnnotationError, ValueError) as e:
        sys.exit(f"run_sigma_vis.py: error: {e}")
    except OSError as e:  # an output folder that cannot be written, a file that cannot be read
        if e.filename is None or not e.strerror:
            raise
        sys.exit(f"run_sigma_vis.py: error: {describe(e)}")
