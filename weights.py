"""Reading weights into our models: every file a user can hand to --finetune, --teacher_ckpt or a probe.

Our checkpoints and the published SIGMA / VideoMAE ones (.pth or .safetensors), transformers VideoMAE
folders and files and VideoMAEv2 Hub encoders (read in our names through hf_weights' converters) go into
the video ViT (`read_pretrained`, `load_pretrained_weights`, `pooling_for_frozen_features`; `backbone_kwargs`
builds the ViT a transformers / VideoMAEv2 config declares); DINO v1 /
DINOv2 files go into the frozen teacher (`build_teacher`).

Layers: the model files (modeling_finetune, modeling_pretrain) import torch and timm only; hf_weights
(format conversion and export) sits on them; this module sits on both, and the drivers, evaluations and
feature extraction import it. Nothing below imports this module.
"""
import logging
from functools import partial
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import checkpoint_filter_fn

from checkpointing import CheckpointMismatch, state_dict_from
from hf_weights import HubConfig, read_checkpoint, read_weights
from modeling_finetune import VIT_SIZES, VisionTransformer, interpolate_pos_embed
from modeling_pretrain import DinoTeacher, teacher_arch

logger = logging.getLogger(__name__)


def _backbone_state_dict(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Strip wrappers and the pretraining prefix; return (backbone tensors, dropped keys)."""
    state = {k.replace("module.", "", 1) if k.startswith("module.") else k: v for k, v in state.items()}
    state = {k.replace("_orig_mod.", "", 1) if k.startswith("_orig_mod.") else k: v for k, v in state.items()}
    for prefix in ("encoder.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            return kept, sorted(k for k in state if not k.startswith(prefix))
    return state, []


class Pretrained(NamedTuple):
    """A checkpoint read once (`read_pretrained`) for both `pooling_for_frozen_features` and
    `load_pretrained_weights`."""
    path: str
    checkpoint: object  # what the file holds, in our names
    hub: Optional[HubConfig]  # the transformers / VideoMAEv2 config, if the file came with one


def read_pretrained(path: str) -> Pretrained:
    """Our, official SIGMA / VideoMAE, transformers or VideoMAEv2 weights (.pth or .safetensors)."""
    return Pretrained(path, *read_checkpoint(path))


def load_pretrained_weights(model: VisionTransformer, source: Union[str, Pretrained], model_key: str = "model|module",
                            model_prefix: str = "") -> Dict[str, list]:
    """Initialise a fine-tuning backbone from a pretraining or fine-tuning checkpoint.

    Accepts our checkpoints and the published SIGMA and VideoMAE ones (also as .safetensors), transformers
    VideoMAE folders / files and VideoMAEv2 Hub encoders (see hf_weights): the state dict under one of
    `model_key` ('|'-separated) or the file itself; ``module.`` / ``encoder.`` / ``backbone.``
    prefixes stripped; decoder, projection and prototypes dropped; the classifier head dropped
    when its shape differs; a learnable ``pos_embed`` resized to the model's frames and size (a
    fixed sin-cos model recomputes its own table). Any other shape mismatch, or backbone weights
    missing from the file, raise ValueError naming the keys. `model_prefix` (the official
    --model_prefix) is stripped from the keys first; keys without it are dropped.

    Returns:
        {"loaded": [...], "initialised": [...], "dropped": [...]} key lists, also logged.
    """
    path, checkpoint, hub = source if isinstance(source, Pretrained) else read_pretrained(source)
    if hub is not None:
        check_vit_size(model, _backbone_state_dict(state_dict_from(checkpoint, path, model_key))[0], path)
        checkpoint = hub.adapt(model, checkpoint)  # its config's sizes checked, its norm eps and pooling taken
    state = state_dict_from(checkpoint, path, model_key)
    dropped = []
    if model_prefix:
        dropped = sorted(k for k in state if not k.startswith(model_prefix))
        state = {k[len(model_prefix):]: v for k, v in state.items() if k.startswith(model_prefix)}
        if not state:
            raise ValueError(f"{path}: no key starts with --model_prefix {model_prefix!r}; keys: {dropped[:10]}")
    state, more = _backbone_state_dict(state)
    dropped += more
    check_vit_size(model, state, path)
    own = model.state_dict()
    for key in list(state):
        if key not in own:
            dropped.append(key)
            del state[key]
        elif key == "pos_embed" and state[key].shape != own[key].shape:
            state[key] = interpolate_pos_embed(state[key], model.grid_size, key)
        elif key.startswith("head.") and state[key].shape != own[key].shape:
            logger.info("%s: dropping %s %s (model has %s)", path, key, tuple(state[key].shape), tuple(own[key].shape))
            dropped.append(key)
            del state[key]
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if v.shape != own[k].shape]
    if bad:  # the first few: a list of every tensor would be a line of thousands of characters
        raise CheckpointMismatch(path, "shape mismatch", f"{path} does not match the model: " + "; ".join(bad[:3])
                                 + (f"; ... ({len(bad)} tensors in all)" if len(bad) > 3 else ""))
    initialised = sorted(k for k in own if k not in state)
    missing = [k for k in initialised if not k.startswith(("head.", "fc_norm.", "norm.", "pos_embed"))]
    if missing:
        raise CheckpointMismatch(path, "missing weights",
                                 f"{path} lacks backbone weights {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                                 f"({len(missing)} keys): is it a checkpoint of this model size?")
    model.load_state_dict(state, strict=False)
    report = {"loaded": sorted(state), "initialised": initialised, "dropped": sorted(dropped)}
    logger.info("loaded %d tensors from %s; newly initialised: %s; dropped from checkpoint: %s",
                len(state), path, initialised, _summarise(report["dropped"]))
    return report


def _size_name(embed_dim: int, depth: int) -> str:
    """'ViT-S (embed 384, 12 blocks)', or 'a ViT (embed 500, 7 blocks)' for a size no factory builds."""
    short = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
    size = next((s for s, (d, n, _) in VIT_SIZES.items() if (d, n) == (embed_dim, depth)), None)
    return f"{'ViT-' + short[size] if size else 'a ViT'} (embed {embed_dim}, {depth} blocks)"


def check_vit_size(model: VisionTransformer, state: Dict[str, torch.Tensor], path: str) -> None:
    """CheckpointMismatch naming both sizes when the backbone weights `state` (our names) are of another
    published size than `model`: 'checkpoint is ViT-S (embed 384, 12 blocks); --model asks for ViT-B ...'."""
    if "patch_embed.proj.weight" not in state:
        return  # not a backbone at all: the missing weights are named later
    embed_dim = state["patch_embed.proj.weight"].shape[0]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    known = {(d, n) for d, n, _ in VIT_SIZES.values()}
    if (embed_dim, depth) == (model.embed_dim, len(model.blocks)) or (embed_dim, depth) not in known:
        return  # the same size, or a damaged or unusual file: its tensors are named one by one later
    ours = _size_name(model.embed_dim, len(model.blocks))
    theirs = _size_name(embed_dim, depth)
    fits = next((f" (--model vit_{s}_patch16_224 fits it)" for s, (d, n, _) in VIT_SIZES.items()
                 if (d, n) == (embed_dim, depth)), "")
    raise CheckpointMismatch(path, "another model size",
                             f"{path}: checkpoint is {theirs}; --model asks for {ours}{fits}")


def pooling_for_frozen_features(source: Union[str, Pretrained], model_key: str = "model|module") -> bool:
    """`use_mean_pooling` under which a checkpoint's features are evaluated frozen (kNN, linear probe).

    A fine-tuned checkpoint has a trained ``fc_norm`` (mean pooling, then fc_norm); a pretraining
    checkpoint has the encoder's trained final ``norm`` instead (norm each token, then average), so
    its features are read through that norm rather than a fresh, untrained fc_norm. A transformers /
    VideoMAEv2 checkpoint says it in its config (use_mean_pooling; false: token 0 after the final norm).
    """
    path, checkpoint, hub = source if isinstance(source, Pretrained) else read_pretrained(source)
    if hub is not None:  # a transformers / VideoMAEv2 config says how its features are pooled
        return hub.use_mean_pooling
    return any(k.endswith("fc_norm.weight") for k in state_dict_from(checkpoint, path, model_key))


def _summarise(keys: List[str]) -> str:
    """'decoder.* (52), prototypes' style summary of a long key list."""
    groups: Dict[str, int] = {}
    for k in keys:
        top = k.split(".")[0]
        groups[top] = groups.get(top, 0) + 1
    return ", ".join(f"{g}.* ({n})" if n > 1 else g for g, n in groups.items()) or "nothing"


def build_teacher(target_type: str, teacher: str, img_size: int, checkpoint: str, patch_size: int = 16) -> DinoTeacher:
    """A frozen DINO teacher from a local weights file (never downloaded).

    Accepts the published formats: DINO v1 backbone state dicts (also full DINO training
    checkpoints, whose ``teacher`` entry is used) and DINOv2 state dicts with register tokens,
    converted to timm's layout by timm's own filter (which also resizes positions to img_size).
    """
    arch = teacher_arch(target_type, teacher)
    if not checkpoint:
        raise ValueError(f"target_type {target_type} needs --teacher_ckpt: a local file with the {arch} weights")
    vit = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size)
    state = state_dict_from(read_weights(checkpoint), checkpoint, "teacher|model|state_dict")  # .pth or .safetensors
    for prefix in ("module.", "backbone."):
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    state = checkpoint_filter_fn({k: v for k, v in state.items() if not k.startswith("head")}, vit)
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{checkpoint} is not a {arch} checkpoint: missing {missing[:6]} "
                         f"({len(missing)} keys), unexpected {unexpected[:6]}")
    return DinoTeacher(vit, grid=(img_size // patch_size, img_size // patch_size))


def backbone_kwargs(path: str) -> Dict[str, Any]:
    """VisionTransformer(**kwargs) for the architecture a transformers / VideoMAEv2 checkpoint declares
    (also sizes no factory of ours builds, such as VideoMAEv2's ViT-g/14)."""
    state, hub = read_checkpoint(path)
    if hub is None:
        raise ValueError(f"{path} is not a transformers VideoMAE or VideoMAEv2 checkpoint")
    missing = [k for k in ("embed_dim", "depth", "num_heads", "mlp_hidden") if hub.value(k) is None]
    if missing:
        raise ValueError(f"{path}: its config does not give {missing}")
    embed = hub.value("embed_dim")
    head = state.get("head.weight")
    return dict(img_size=hub.value("image_size") or 224, patch_size=hub.value("patch_size"),
                in_chans=hub.value("in_chans"), num_classes=0 if head is None else head.shape[0], embed_dim=embed,
                depth=hub.value("depth"), num_heads=hub.value("num_heads"),
                # int(embed * ratio) must give mlp_hidden back: aim half a unit above it, clear of rounding.
                mlp_ratio=(hub.value("mlp_hidden") + 0.5) / embed, qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=hub.value("eps") or 1e-6),
                all_frames=hub.value("num_frames") or 16, tubelet_size=hub.value("tubelet_size"),
                use_mean_pooling=hub.use_mean_pooling)
