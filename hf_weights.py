"""Converting video ViT weights between formats: transformers VideoMAE, VideoMAEv2 Hub, safetensors, ours.

Our backbone (modeling_finetune.VisionTransformer) keeps the official VideoMAE / SIGMA names. This module
maps the other layouts onto them and back, and nothing else:

- transformers VideoMAE folders or files (VideoMAEModel, VideoMAEForPreTraining,
  VideoMAEForVideoClassification; ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, sharded or
  not) -> our names (`read_checkpoint`), their config honoured or refused against a model (`HubConfig.adapt`);
- OpenGVLab VideoMAEv2 Hub encoders (custom-code safetensors: ``model.`` prefix, ``model_config``);
- our and the official SIGMA / VideoMAE checkpoints -> a transformers folder (`export_hf`); what no
  transformers class holds (SIGMA's prototypes and projection, a decoder it cannot express) goes to a side
  file, `EXTRAS_NAME`, that `read_checkpoint` merges back, so ours -> transformers -> ours is lossless;
- ``.safetensors`` beside ``.pth`` (`read_weights`, `write_safetensors`).

transformers itself is never imported (config.json is plain JSON); safetensors is imported when a
.safetensors file is read or written.

    python hf_weights.py export CHECKPOINT OUT_DIR          # ours / official -> transformers folder
    python hf_weights.py convert SOURCE OUT.pth|.safetensors  # any readable layout -> our names, weights only
"""
import argparse
import hashlib
import json
import errno
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from checkpointing import CheckpointError, read_torch_file
from flags import ArgumentParser, DocHelpFormatter
from modeling_finetune import VIT_SIZES
from modeling_pretrain import DECODER_SIZES
from shutdown import describe, pid_alive, run_tool

logger = logging.getLogger(__name__)

Tensors = Dict[str, torch.Tensor]

EXTRAS_NAME = "sigma_extras.safetensors"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# transformers' VideoMAEForVideoClassification builds its fc_norm as nn.LayerNorm(hidden_size): eps 1e-5,
# whatever the config's layer_norm_eps says.
HF_FC_NORM_EPS = 1e-5
# Tensors of a pretraining state dict that are not the encoder's.
PRETRAIN_PARTS = ("decoder.", "encoder_to_decoder.", "mask_token", "prototypes", "head.")


# ---------------------------------------------------------------------------------------------- files

def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("reading or writing .safetensors files needs the safetensors package: "
                          "pip install safetensors") from None
    return safetensors.torch


def read_weights(path: str) -> Dict[str, Any]:
    """The contents of a weights file: a ``.safetensors`` file's tensors, or a torch file read with
    weights_only (checkpointing.read_torch_file). Both on the CPU."""
    if not path.endswith(".safetensors"):
        return read_torch_file(path)
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such file")
    st = _safetensors()
    try:
        return st.load_file(path, device="cpu")
    except Exception as e:  # safetensors raises its own error types for a bad header or a short file
        raise CheckpointError(path, f"not a readable safetensors file ({type(e).__name__}: {str(e)[:200]})") from None


def write_safetensors(tensors: Tensors, path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write tensors as .safetensors (temp file, then rename). Views (a split qkv) are copied, since the
    format stores no shared memory; ``format: pt`` is what transformers' loader asks of the metadata."""
    st = _safetensors()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        st.save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, tmp,
                     metadata={"format": "pt", **(metadata or {})})
        share(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def share(path: str) -> None:
    """Give a written file the mode the umask allows (safetensors and temp files are created 600, so
    colleagues on a shared cluster could not read an exported folder); a folder also gets x."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


def _weight_files(path: str) -> Tuple[List[str], Optional[str], Optional[str]]:
    """(weight files, side file or None, config.json or None) of a folder, shard index or weights file."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
        found = next((os.path.join(path, n) for n in WEIGHT_FILES if os.path.isfile(os.path.join(path, n))), None)
        if found is None:
            raise CheckpointError(path, "no weights", f"{path} holds none of {', '.join(WEIGHT_FILES)}")
        path = found
    files = [path]
    if path.endswith(".index.json"):
        try:
            with open(path) as f:
                files = [os.path.join(folder, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(path, f"not a shard index with a weight_map ({e})") from None
    extras, config = os.path.join(folder, EXTRAS_NAME), os.path.join(folder, "config.json")
    return (files, extras if os.path.isfile(extras) and extras not in files else None,
            config if os.path.isfile(config) else None)


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON config ({e})") from None


def _has_hf_names(obj: Any) -> bool:
    return isinstance(obj, dict) and any(isinstance(k, str) and k.endswith("patch_embeddings.projection.weight")
                                         for k in obj)


def _is_videomae_v2(tensors: Tensors, config: Optional[Dict[str, Any]]) -> bool:
    return (config is not None and "model_config" in config) or "model.patch_embed.proj.weight" in tensors


# -------------------------------------------------------------------------------- names: HF <-> ours

# transformers VideoMAELayer -> our Block (attention q/k/v handled apart: they are one qkv for us).
_LAYER = {"attention.output.dense": "attn.proj", "layernorm_before": "norm1", "layernorm_after": "norm2",
          "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
# Tensors outside the layers, after the optional ``videomae.`` prefix.
_TOP = {"embeddings.patch_embeddings.projection": "patch_embed.proj", "layernorm": "norm", "fc_norm": "fc_norm",
        "classifier": "head", "decoder.norm": "decoder.norm", "decoder.head": "decoder.head",
        "encoder_to_decoder": "encoder_to_decoder"}
_HF_BLOCK = re.compile(r"(encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)")


def _layer_to_ours(block: str, rest: str, value: torch.Tensor, out: Tensors, qkv: Dict[str, Tensors]) -> bool:
    """Put one HF layer tensor under our name; False when `rest` is not a VideoMAE layer tensor."""
    attn = re.fullmatch(r"attention\.attention\.(query|key|value)\.weight", rest)
    bias = re.fullmatch(r"attention\.attention\.(q_bias|v_bias|query\.bias|value\.bias|key\.bias)", rest)
    module, _, param = rest.rpartition(".")
    if attn:
        qkv.setdefault(block, {})[attn.group(1)] = value
    elif bias and bias.group(1) == "key.bias":
        # q.(k + b) = q.k + q.b is the same for every key of a query: softmax drops it, so a key bias
        # (which VideoMAE never has) changes nothing and our attention has none.
        pass
    elif bias:
        out[f"{block}.attn.{bias.group(1)[0]}_bias"] = value
    elif module in _LAYER and param in ("weight", "bias"):
        out[f"{block}.{_LAYER[module]}.{param}"] = value
    else:
        return False
    return True


def from_transformers(tensors: Tensors, path: str) -> Tensors:
    """A transformers VideoMAE state dict (any of its three classes) in our names.

    The encoder's tensors keep backbone names (``blocks.N.attn.qkv.weight``); a pretraining model's
    decoder, ``encoder_to_decoder`` and ``mask_token`` keep the names of modeling_pretrain.
    """
    out: Tensors = {}
    qkv: Dict[str, Tensors] = {}
    for key, value in tensors.items():
        name = key[len("videomae."):] if key.startswith("videomae.") else key
        block = _HF_BLOCK.fullmatch(name)
        module, _, param = name.rpartition(".")
        if block:
            ours = ("blocks." if block.group(1).startswith("encoder") else "decoder.blocks.") + block.group(2)
            if _layer_to_ours(ours, block.group(3), value, out, qkv):
                continue
        elif name == "mask_token":
            out[name] = value
            continue
        elif module in _TOP and param in ("weight", "bias"):
            out[f"{_TOP[module]}.{param}"] = value
            continue
        raise ValueError(f"{path}: unexpected tensor {key!r} {tuple(value.shape)} for a transformers VideoMAE model")
    for block, parts in qkv.items():
        missing = sorted({"query", "key", "value"} - set(parts))
        if missing:
            raise ValueError(f"{path}: {block} has no attention {', '.join(missing)} weight")
        out[f"{block}.attn.qkv.weight"] = torch.cat([parts["query"], parts["key"], parts["value"]])  # [3D, D]
    return out


def _block_to_hf(ours: Tensors, prefix: str, hf_prefix: str) -> Tensors:
    """Our Block tensors under `prefix` (``blocks.`` / ``decoder.blocks.``) in transformers' layer names."""
    inverse = {v: k for k, v in _LAYER.items()}
    out: Tensors = {}
    for key, value in ours.items():
        if not key.startswith(prefix):
            continue
        index, rest = key[len(prefix):].split(".", 1)
        layer = f"{hf_prefix}.{index}."
        if rest == "attn.qkv.weight":
            for part, chunk in zip(("query", "key", "value"), value.chunk(3)):  # [D, D] each
                out[f"{layer}attention.attention.{part}.weight"] = chunk
        elif rest in ("attn.q_bias", "attn.v_bias"):
            # The names transformers 4.x loads; 5.x renames them to query.bias / value.bias on load.
            out[f"{layer}attention.attention.{rest[5:]}"] = value
        elif rest.rpartition(".")[0] in inverse:
            module, _, param = rest.rpartition(".")
            out[f"{layer}{inverse[module]}.{param}"] = value
        else:
            raise ValueError(f"{key}: a tensor transformers' VideoMAELayer has no place for")
    return out


def to_transformers(backbone: Tensors, rest: Tensors, *, prefix: str, with_decoder: bool) -> Tensors:
    """Our encoder (backbone names) and, with `with_decoder`, a pretraining decoder -> transformers names.

    `prefix` is ``videomae.`` for the pretraining and classification classes, empty for VideoMAEModel.
    """
    out = {prefix + k: v for k, v in _block_to_hf(backbone, "blocks.", "encoder.layer").items()}
    top = {v: k for k, v in _TOP.items()}
    for key, value in backbone.items():
        module, _, param = key.rpartition(".")
        if key.startswith("blocks."):
            continue
        if module not in top:
            raise ValueError(f"{key}: a tensor transformers' VideoMAE has no place for")
        if module in ("head", "fc_norm"):
            out[f"{top[module]}.{param}"] = value  # classifier and fc_norm sit outside the ``videomae.`` prefix
        else:
            out[f"{prefix}{top[module]}.{param}"] = value
    if with_decoder:
        out.update(_block_to_hf(rest, "decoder.blocks.", "decoder.decoder_layers"))
        for key in ("decoder.norm.weight", "decoder.norm.bias", "decoder.head.weight", "decoder.head.bias",
                    "encoder_to_decoder.weight", "mask_token"):
            out[key] = rest[key]
    return out


# ------------------------------------------------------------------------------------ configs

@dataclass
class HubConfig:
    """The architecture a foreign checkpoint declares, each value with the config key that named it.

    `fields` maps our name -> (config key, value): embed_dim, depth, num_heads, mlp_hidden, patch_size,
    tubelet_size, in_chans, image_size, num_frames, eps. `use_mean_pooling` False means transformers'
    and VideoMAEv2's first-token pooling: token 0 after the final norm.
    """
    path: str
    source: str
    fields: Dict[str, Tuple[str, Any]] = field(default_factory=dict)
    use_mean_pooling: bool = True
    fc_norm_eps: Optional[float] = None

    def value(self, name: str) -> Any:
        return self.fields.get(name, ("", None))[1]

    def adapt(self, model: nn.Module, state: Tensors) -> Tensors:
        """Check this config against `model`, then give the model the checkpoint's norm eps and pooling.

        Raises ValueError naming the key and value of every size the model does not have. A first-token
        classifier is dropped (with a warning) from `state` when the model mean-pools: its head was
        trained on other features.
        """
        self._check(model)
        eps = self.value("eps")
        if eps is not None:
            for module in [m for b in model.blocks for m in (b.norm1, b.norm2)] + [model.norm]:
                if isinstance(module, nn.LayerNorm):
                    module.eps = eps
        if model.fc_norm is not None and self.fc_norm_eps is not None:
            model.fc_norm.eps = self.fc_norm_eps
        model.pool_first_token = not self.use_mean_pooling and model.fc_norm is None
        if not self.use_mean_pooling and model.fc_norm is not None and "head.weight" in state:
            logger.warning("%s: dropping its classifier, trained on the first token (use_mean_pooling false), "
                           "since the model mean-pools", self.path)
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        logger.info("%s (%s): layer norm eps %s, fc_norm eps %s, pooling %s", self.path, self.source, eps,
                    self.fc_norm_eps if model.fc_norm is not None else "-",
                    "first token" if model.pool_first_token else "mean")
        return state

    def _check(self, model: nn.Module) -> None:
        ours = {"embed_dim": model.embed_dim, "depth": len(model.blocks), "num_heads": model.blocks[0].attn.num_heads,
                "mlp_hidden": model.blocks[0].mlp.fc1.out_features, "patch_size": model.patch_size,
                "tubelet_size": model.tubelet_size, "in_chans": model.patch_embed.proj.in_channels}
        bad = [f"{key}={value!r} (the model has {name} {ours[name]})" for name, (key, value) in self.fields.items()
               if name in ours and value is not None and value != ours[name]]
        if bad:
            raise ValueError(f"{self.path}: its {self.source} config does not fit the model: {'; '.join(bad)}. "
                             f"Build the model it describes: VisionTransformer(**weights.backbone_kwargs(path))")
        for name, ours_value in (("image_size", model.grid_size[1] * model.patch_size),
                                 ("num_frames", model.grid_size[0] * model.tubelet_size)):
            key, value = self.fields.get(name, ("", None))
            if value is not None and value != ours_value:
                logger.info("%s: %s=%s, the model is built for %s (fixed sin-cos positions follow the model)",
                            self.path, key, value, ours_value)


def _refuse(path: str, key: str, value: Any, reason: str) -> ValueError:
    return ValueError(f"{path}: config {key}={value!r} is not supported: {reason}")


def _square(path: str, key: str, value: Any) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise _refuse(path, key, value, "our backbone has square patches and frames")
        value = value[0]
    return int(value)


def _videomae_config(config: Dict[str, Any], path: str, source: str) -> HubConfig:
    """A transformers VideoMAEConfig (config.json) checked and normalised."""
    if config.get("model_type") != "videomae":
        raise _refuse(path, "model_type", config.get("model_type"), "only transformers VideoMAE ('videomae') "
                      "and VideoMAEv2 (config with model_config) checkpoints are read")
    if config.get("hidden_act", "gelu") != "gelu":
        raise _refuse(path, "hidden_act", config["hidden_act"], "our MLP uses the exact (erf) GELU, 'gelu'")
    bias_key = "qv_bias" if "qv_bias" in config else "qkv_bias"
    if not config.get(bias_key, True):
        raise _refuse(path, bias_key, config[bias_key], "our attention has query and value biases")
    get = lambda key, default: (key, config.get(key, default))  # noqa: E731
    fields = {"embed_dim": get("hidden_size", 768), "depth": get("num_hidden_layers", 12),
              "num_heads": get("num_attention_heads", 12), "mlp_hidden": get("intermediate_size", 3072),
              "patch_size": ("patch_size", _square(path, "patch_size", config.get("patch_size", 16))),
              "tubelet_size": get("tubelet_size", 2), "in_chans": get("num_channels", 3),
              "image_size": ("image_size", _square(path, "image_size", config.get("image_size", 224))),
              "num_frames": get("num_frames", 16), "eps": get("layer_norm_eps", 1e-12)}
    if fields["embed_dim"][1] % fields["num_heads"][1]:
        raise _refuse(path, "num_attention_heads", fields["num_heads"][1],
                      f"does not divide hidden_size {fields['embed_dim'][1]}")
    return HubConfig(path, source, fields, bool(config.get("use_mean_pooling", True)), HF_FC_NORM_EPS)


# VideoMAEv2 model_config entries our backbone does not have, with the value it must hold.
_V2_FIXED = {"qk_scale": (None, "our attention scales by head_dim ** -0.5"),
             "init_values": (0.0, "layer scale (gamma_1 / gamma_2) is not in our Block"),
             "cos_attn": (False, "cosine attention is not in our Block"),
             "attn_head_dim": (None, "our heads are embed_dim / num_heads wide"),
             "qkv_bias": (True, "our attention has query and value biases"),
             "use_learnable_pos_emb": (False, "the published encoders use fixed sin-cos positions, as ours")}


def _v2_config(config: Dict[str, Any], path: str) -> HubConfig:
    """A VideoMAEv2 Hub config.json (its ``model_config``) checked and normalised."""
    mc = config.get("model_config", {})
    for key, (wanted, reason) in _V2_FIXED.items():
        if key in mc and (mc[key] or None) != (wanted or None):
            raise _refuse(path, f"model_config.{key}", mc[key], reason)
    if mc.get("norm_layer", "nn.LayerNorm") not in ("nn.LayerNorm", "LayerNorm"):
        raise _refuse(path, "model_config.norm_layer", mc["norm_layer"], "our blocks use LayerNorm")
    key = lambda k: f"model_config.{k}"  # noqa: E731
    embed = int(mc.get("embed_dim", 768))
    fields = {"embed_dim": (key("embed_dim"), embed), "depth": (key("depth"), mc.get("depth")),
              "num_heads": (key("num_heads"), mc.get("num_heads")),
              "mlp_hidden": (key("mlp_ratio") + " x embed_dim",
                             int(embed * mc["mlp_ratio"]) if "mlp_ratio" in mc else None),
              "patch_size": (key("patch_size"), _square(path, key("patch_size"), mc.get("patch_size", 16))),
              "tubelet_size": (key("tubelet_size"), mc.get("tubelet_size", 2)),
              "in_chans": (key("in_chans"), mc.get("in_chans", 3)),
              "image_size": (key("img_size"), _square(path, key("img_size"), mc.get("img_size", 224))),
              "num_frames": (key("num_frames"), mc.get("num_frames", mc.get("all_frames"))),
              "eps": (key("layer_norm_eps"), mc.get("layer_norm_eps", 1e-6))}
    return HubConfig(path, "VideoMAEv2", fields, bool(mc.get("use_mean_pooling", True)), fields["eps"][1])


def _tensor_fields(state: Tensors) -> Dict[str, Tuple[str, Any]]:
    """The sizes a backbone state dict (our names) has, as HubConfig fields."""
    proj = state["patch_embed.proj.weight"]  # [D, C, t, p, p]
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    return {"embed_dim": ("tensor shapes", proj.shape[0]), "in_chans": ("tensor shapes", proj.shape[1]),
            "tubelet_size": ("tensor shapes", proj.shape[2]), "patch_size": ("tensor shapes", proj.shape[3]),
            "depth": ("tensor names", len({k.split(".")[1] for k in state if k.startswith("blocks.")})),
            "mlp_hidden": ("tensor shapes", fc1.shape[0] if fc1 is not None else None)}


def _check_config_against_tensors(hub: HubConfig, state: Tensors) -> None:
    """A config.json that does not describe the tensors beside it (e.g. a ViT-L config left beside ViT-Ti
    weights by an interrupted export) is an error naming every mismatch."""
    if "patch_embed.proj.weight" not in state:
        raise CheckpointError(hub.path, "no patch embedding", f"{hub.path}: its weights have no patch embedding")
    bad = [f"{key}={hub.value(name)!r} but the tensors have {name} {value}"
           for name, (_, value) in _tensor_fields(state).items()
           for key in [hub.fields.get(name, ("", None))[0]]
           if value is not None and hub.value(name) is not None and hub.value(name) != value]
    if bad:
        raise ValueError(f"{hub.path}: config.json does not describe its weights: {'; '.join(bad)} "
                         "(a config and weights of different exports?)")


def _inferred_config(state: Tensors, path: str, source: str) -> HubConfig:
    """Sizes read from the tensors of a file without config.json (heads and eps then come from the model)."""
    logger.warning("%s: no config.json beside it: sizes read from its tensors; heads and norm eps are the model's",
                   path)
    fields = _tensor_fields(state)
    first_token = "norm.weight" in state and "fc_norm.weight" not in state
    fc_norm_eps = HF_FC_NORM_EPS if source.startswith("transformers") else None
    return HubConfig(path, source, fields, not first_token, fc_norm_eps)


def _class_name(state: Tensors) -> str:
    if "decoder.head.weight" in state:
        return "VideoMAEForPreTraining"
    return "VideoMAEForVideoClassification" if "head.weight" in state or "fc_norm.weight" in state else "VideoMAEModel"


# ------------------------------------------------------------------------------------ reading

def read_checkpoint(path: str) -> Tuple[Any, Optional[HubConfig]]:
    """A checkpoint in our names, and the architecture its config declares (None for our own layouts).

    Torch files in our / the official layout come back as read_torch_file gives them. transformers
    VideoMAE and VideoMAEv2 checkpoints (a folder, a weights file or a shard index) come back as one
    flat state dict in our names: backbone names, or the pretraining layout (``encoder.*``, ``decoder.*``
    ...) when the file has a decoder or a side file `EXTRAS_NAME` adds SIGMA's parts. A .safetensors
    file of our own names comes back as its tensors.
    """
    extras_path = None
    if os.path.isdir(path) or path.endswith((".safetensors", ".index.json")):
        files, extras_path, config_path = _weight_files(path)
        tensors: Tensors = {}
        for name in files:
            tensors.update(read_weights(name))
    else:
        tensors = read_torch_file(path)
        if not _has_hf_names(tensors):
            return tensors, None
        config_path = os.path.join(os.path.dirname(path), "config.json")
        config_path = config_path if os.path.isfile(config_path) else None
    config = _read_json(config_path) if config_path else None
    if _has_hf_names(tensors):
        state = from_transformers(tensors, path)
        source = "transformers " + _class_name(state)
        hub = _videomae_config(config, path, source) if config else _inferred_config(state, path, source)
    elif _is_videomae_v2(tensors, config):
        state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in tensors.items()}
        bad = sorted(k for k in state if ".gamma_" in k or k.endswith("attn.scale"))
        if bad:
            raise ValueError(f"{path}: tensors {bad[:4]} (layer scale / cosine attention) have no place in our Block")
        hub = _v2_config(config, path) if config else _inferred_config(state, path, "VideoMAEv2")
    else:
        return tensors, None
    if config:
        _check_config_against_tensors(hub, state)
    if extras_path:  # SIGMA's parts that no transformers class holds, already in our names
        state.update(_read_extras(extras_path, state))
    if any(k.startswith(PRETRAIN_PARTS[:4]) for k in state):  # a pretraining model: encoder under encoder.*
        state = {(k if k.startswith(PRETRAIN_PARTS) else "encoder." + k): v for k, v in state.items()}
    return state, hub


def _backbone_fingerprint(backbone: Tensors) -> str:
    """sha256 over the names, shapes, dtypes and bytes of the encoder's patch embedding and blocks (our
    names): the side file records it, so that it is only ever merged with the weights it was exported with."""
    h = hashlib.sha256()
    for name in sorted(k for k in backbone if k.startswith(("patch_embed.", "blocks."))):
        t = backbone[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_extras(path: str, backbone: Tensors) -> Tensors:
    """The side file's tensors, after checking that it belongs to `backbone` (our names)."""
    st = _safetensors()
    try:
        with st.safe_open(path, framework="pt") as f:
            recorded = (f.metadata() or {}).get("backbone_sha256")
    except Exception as e:  # safetensors' own error types
        raise CheckpointError(path, f"not a readable safetensors file ({type(e).__name__}: {str(e)[:200]})") from None
    if recorded is None:
        logger.warning("%s records no backbone fingerprint (an export of an older version): cannot check that it "
                       "belongs to the weights beside it", path)
    elif recorded != _backbone_fingerprint(backbone):
        raise ValueError(f"{path} belongs to other weights than the ones beside it (backbone fingerprint "
                         f"{recorded[:12]}..., the weights' {_backbone_fingerprint(backbone)[:12]}...): export "
                         "the checkpoint again into an empty folder")
    return read_weights(path)


# ------------------------------------------------------------------------------------ exporting

def _state_and_config(checkpoint: str, model_key: str) -> Tuple[Tensors, Dict[str, Any]]:
    raw = read_weights(checkpoint)
    config = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    state = next((raw[k] for k in model_key.split("|") if isinstance(raw.get(k), dict)), raw)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{checkpoint}: no state dict under {model_key!r}; top-level keys: {list(raw)[:10]}")
    for wrapper in ("module.", "_orig_mod."):
        state = {k[len(wrapper):] if k.startswith(wrapper) else k: v for k, v in state.items()}
    return state, config


def _num_heads(embed: int, depth: int, config: Dict[str, Any], given: Optional[int], what: str) -> int:
    """Heads from --num_heads, the saved --model name, or the published size of this width and depth."""
    if given:
        return given
    size = next((s for s in VIT_SIZES if f"_{s}_" in str(config.get("model", ""))), None)
    for s, (d, n, h) in VIT_SIZES.items():
        if (size is None or s == size) and d == embed and (depth is None or n == depth):
            return h
    raise ValueError(f"cannot tell the attention heads of the {embed}-wide {what}: give them "
                     f"(--num_heads / --decoder_num_heads)")


def _decoder_heads(width: int, given: Optional[int]) -> Optional[int]:
    return given or next((h for d, h in DECODER_SIZES.values() if d == width), None)


def _hf_config(backbone: Tensors, config: Dict[str, Any], *, num_heads: Optional[int], image_size: Optional[int],
               num_frames: Optional[int]) -> Dict[str, Any]:
    """config.json fields of our encoder (VideoMAEConfig's names)."""
    proj = backbone["patch_embed.proj.weight"]  # [D, C, t, p, p]
    depth = len({k.split(".")[1] for k in backbone if k.startswith("blocks.")})
    if "pos_embed" in backbone:
        raise ValueError("the checkpoint has a learnable pos_embed: transformers' VideoMAE has fixed sin-cos positions")
    if "blocks.0.attn.q_bias" not in backbone:
        raise ValueError("the checkpoint's attention has no q/v biases: export needs qkv_bias models")
    image_size = image_size or config.get("input_size") or 224
    num_frames = num_frames or config.get("num_frames") or 16
    return {"model_type": "videomae", "hidden_size": proj.shape[0], "num_channels": proj.shape[1],
            "tubelet_size": proj.shape[2], "patch_size": proj.shape[3], "num_hidden_layers": depth,
            "num_attention_heads": _num_heads(proj.shape[0], depth, config, num_heads, "encoder"),
            "intermediate_size": backbone["blocks.0.mlp.fc1.weight"].shape[0], "image_size": int(image_size),
            "num_frames": int(num_frames), "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
            "layer_norm_eps": 1e-6,  # every factory of ours
            "qkv_bias": True, "qv_bias": True,  # the 4.x and the 5.x name
            "use_mean_pooling": "norm.weight" not in backbone, "dtype": "float32"}


def _decoder_config(rest: Tensors, hf: Dict[str, Any], config: Dict[str, Any],
                    decoder_num_heads: Optional[int]) -> Optional[Dict[str, Any]]:
    """VideoMAEForPreTraining's decoder_* fields, or None when transformers cannot hold this decoder."""
    if "decoder.head.weight" not in rest:
        return None
    width = rest["decoder.norm.weight"].shape[0]
    heads = _decoder_heads(width, decoder_num_heads)
    pixels = hf["num_channels"] * hf["tubelet_size"] * hf["patch_size"] ** 2
    if heads is None or rest["decoder.head.weight"].shape[0] != pixels:
        return None  # its head predicts SIGMA's features, not the pixels VideoMAEForPreTraining predicts
    return {"decoder_hidden_size": width, "decoder_num_attention_heads": heads,
            "decoder_num_hidden_layers": len({k.split(".")[2] for k in rest if k.startswith("decoder.blocks.")}),
            "decoder_intermediate_size": rest["decoder.blocks.0.mlp.fc1.weight"].shape[0],
            "norm_pix_loss": bool(config.get("normalize_target", True))}


# What an export folder may hold (ours, or what transformers' save_pretrained writes); a run folder is
# told by its own files.
EXPORT_FILES = set(WEIGHT_FILES) | {"config.json", EXTRAS_NAME, "README.md", "generation_config.json"}
RUN_FILES = ("checkpoint-latest.pth", "train.log", "log.txt", "metrics.jsonl")


def _check_target(out_dir: str, overwrite: bool) -> None:
    """Refuse a target that is a training run's folder, or holds anything without --overwrite, or holds
    more than an export with it."""
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} exists and is not a folder")
    names = sorted(os.listdir(out_dir))
    run = [n for n in names if n in RUN_FILES or re.fullmatch(r"checkpoint-.*\.pth", n)]
    if run:
        raise ValueError(f"{out_dir} is a training run's folder (it holds {', '.join(run[:3])}): export into a "
                         "folder of its own, e.g. OUTPUT_DIR/hf")
    if names and not overwrite:
        raise ValueError(f"{out_dir} is not empty (it holds {', '.join(names[:5])}{' ...' if len(names) > 5 else ''})"
                         ": give --overwrite to replace an earlier export whole, or another folder")
    foreign = [n for n in names if n not in EXPORT_FILES and not n.startswith(".")
               and not re.fullmatch(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)", n)]  # shards
    if foreign:
        raise ValueError(f"{out_dir} holds files that are not an export's ({', '.join(foreign[:5])}): --overwrite "
                         "only replaces an export folder; remove them yourself or choose another folder")


def _ancestors(path: str) -> List[str]:
    """`path` and every folder above it."""
    out = [path]
    while os.path.dirname(out[-1]) != out[-1]:
        out.append(os.path.dirname(out[-1]))
    return out


def _write_folder_atomically(out_dir: str, write: Callable[[str], None], overwrite: bool) -> None:
    """Run write(temp) into a new folder beside `out_dir`, then rename it into place: a reader sees the whole
    new export, the whole old one, or (only for a moment, with overwrite) none; never a mix. Temp folders
    of killed exports (`.NAME.export-PID-*`, pid gone) are removed first."""
    out_dir = os.path.abspath(out_dir)
    _check_target(out_dir, overwrite)
    parent, name = os.path.split(out_dir)
    blocker = next((p for p in _ancestors(parent) if os.path.exists(p) and not os.path.isdir(p)), None)
    if blocker is not None:  # name the folder the user asked for, as every driver does
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), out_dir)
    os.makedirs(parent, exist_ok=True)
    for stale in os.listdir(parent):
        m = re.fullmatch(rf"\.{re.escape(name)}\.(?:export|old)-(\d+)-[0-9a-f]+", stale)
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp, old = os.path.join(parent, f".{name}.export-{tag}"), os.path.join(parent, f".{name}.old-{tag}")
    os.mkdir(tmp)
    try:
        write(tmp)
        share(tmp)
        for entry in os.listdir(tmp):
            with open(os.path.join(tmp, entry), "rb") as f:
                os.fsync(f.fileno())
        if os.path.exists(out_dir) and os.listdir(out_dir):
            os.rename(out_dir, old)  # replaced whole (checked by _check_target): nothing of it is merged
        os.replace(tmp, out_dir)  # over an empty folder too
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def export_hf(checkpoint: str, out_dir: str, *, model_key: str = "model|module", num_heads: Optional[int] = None,
              decoder_num_heads: Optional[int] = None, image_size: Optional[int] = None,
              num_frames: Optional[int] = None, include_head: bool = True, first_token: bool = False,
              overwrite: bool = False) -> Dict[str, Any]:
    """Write our (or an official SIGMA / VideoMAE) checkpoint as a transformers VideoMAE folder.

    A fine-tuned checkpoint becomes VideoMAEForVideoClassification (mean pooling with fc_norm), or
    VideoMAEModel without its head. A pretraining checkpoint becomes VideoMAEForPreTraining when its
    decoder predicts pixels, else VideoMAEModel; every tensor transformers has no place for goes to
    `EXTRAS_NAME` in our names. Sizes come from the tensors; heads, image size and frames from the
    arguments, else the checkpoint's saved config, else the published sizes (224, 16).

    Args:
        include_head: False writes the encoder alone (VideoMAEModel).
        first_token: the head of a checkpoint without fc_norm was trained on token 0 (a model fine-tuned
            from a transformers use_mean_pooling=false checkpoint); without it such a head is refused,
            since ours then pooled the mean of normed tokens, which transformers cannot express.
        overwrite: replace an existing export in `out_dir` whole; without it a folder that holds anything is
            refused. A training run's folder is refused either way. The folder appears complete or not at all.
    Returns:
        {"architecture", "files", "extras"} (also logged).
    """
    state, config = _state_and_config(checkpoint, model_key)
    pretraining = any(k.startswith("encoder.") for k in state)
    if pretraining:
        backbone = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        rest = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    else:
        backbone = {k: v for k, v in state.items() if include_head or not k.startswith(("head.", "fc_norm."))}
        rest = {}
    hf = _hf_config(backbone, config, num_heads=num_heads, image_size=image_size, num_frames=num_frames)
    decoder = _decoder_config(rest, hf, config, decoder_num_heads) if pretraining else None
    if "head.weight" in backbone:
        if "fc_norm.weight" not in backbone and not first_token:
            raise ValueError(f"{checkpoint}: its head was trained on the mean of normed tokens (no fc_norm: "
                             "--use_cls); transformers pools token 0 there. Export without the head "
                             "(include_head=False / --no_head), or say the head saw token 0 (--first_token)")
        architecture = "VideoMAEForVideoClassification"
        n = backbone["head.weight"].shape[0]
        hf.update(id2label={str(i): f"LABEL_{i}" for i in range(n)}, label2id={f"LABEL_{i}": i for i in range(n)})
        if "fc_norm.weight" in backbone:
            logger.warning("transformers' fc_norm has eps %g (ours 1e-6): logits agree to about 1e-6 relative",
                           HF_FC_NORM_EPS)
    else:
        architecture = "VideoMAEForPreTraining" if decoder else "VideoMAEModel"
    hf.update(decoder or {}, architectures=[architecture])
    # Where the weights came from, for scripts/collect_results.py (transformers keeps unknown keys as they are).
    hf["sigma_source"] = {"checkpoint": os.path.abspath(checkpoint),
                          **{k: config[k] for k in ("model", "target_type", "loss_func") if k in config}}
    weights = to_transformers(backbone, rest, prefix="" if architecture == "VideoMAEModel" else "videomae.",
                              with_decoder=decoder is not None)
    held = {"decoder.", "encoder_to_decoder.", "mask_token"} if decoder else set()
    extras = {k: v for k, v in rest.items() if not k.startswith(tuple(held))}
    files = ["config.json", "model.safetensors"] + ([EXTRAS_NAME] if extras else [])

    def write(folder: str) -> None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(hf, f, indent=2, sort_keys=True)
        share(os.path.join(folder, "config.json"))
        write_safetensors(weights, os.path.join(folder, "model.safetensors"))
        if extras:
            write_safetensors(extras, os.path.join(folder, EXTRAS_NAME),
                              {"layout": "sigma", "backbone_sha256": _backbone_fingerprint(backbone)})

    _write_folder_atomically(out_dir, write, overwrite=overwrite)
    report = {"architecture": architecture, "files": files, "extras": sorted(extras)}
    logger.info("exported %s to %s as %s (%d tensors); side file: %s", checkpoint, out_dir, architecture,
                len(weights), sorted({k.split(".")[0] for k in extras}) or "none")
    return report


def convert(source: str, out: str, model_key: str = "model|module") -> int:
    """Write any readable checkpoint's weights in our names to a .pth or .safetensors file; the tensor count."""
    state, hub = read_checkpoint(source)
    if hub is None:
        state, _ = _state_and_config(source, model_key)
    if out.endswith(".safetensors"):
        write_safetensors(state, out)
    else:
        tmp = f"{out}.{os.getpid()}.tmp"
        try:
            torch.save({"model": state}, tmp)
            share(tmp)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    logger.info("wrote %d tensors of %s to %s", len(state), source, out)
    return len(state)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("hf_weights.py", __doc__, formatter_class=DocHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="our / official checkpoint -> transformers VideoMAE folder",
                       formatter_class=DocHelpFormatter)
    e.add_argument("checkpoint", help="our / official .pth or .safetensors checkpoint")
    e.add_argument("out_dir", help="the transformers folder written (config.json, model.safetensors)")
    e.add_argument("--model_key", default="model|module", help="'|'-separated keys holding the state dict")
    e.add_argument("--num_heads", type=int, default=None,
                   help="encoder attention heads (default: from the saved --model or the width)")
    e.add_argument("--decoder_num_heads", type=int, default=None,
                   help="decoder attention heads (default: the published decoder of the width)")
    e.add_argument("--input_size", type=int, default=None,
                   help="image_size written (default: the saved config's, else 224)")
    e.add_argument("--num_frames", type=int, default=None,
                   help="num_frames written (default: the saved config's, else 16)")
    e.add_argument("--no_head", action="store_true", help="write the encoder alone, without the classifier")
    e.add_argument("--first_token", action="store_true", help="the head (no fc_norm) was trained on token 0")
    e.add_argument("--overwrite", action="store_true",
                   help="replace an existing export in out_dir whole (never merged); other folders are refused")
    c = sub.add_parser("convert", help="any readable checkpoint -> our names (.pth or .safetensors)",
                       formatter_class=DocHelpFormatter)
    c.add_argument("source", help="our .pth / .safetensors, a transformers or VideoMAEv2 folder or file")
    c.add_argument("out", help="output file; .safetensors writes safetensors, anything else torch.save")
    c.add_argument("--model_key", default="model|module", help="'|'-separated keys holding the state dict")
    return p


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    try:
        if args.command == "export":
            export_hf(args.checkpoint, args.out_dir, model_key=args.model_key, num_heads=args.num_heads,
                      decoder_num_heads=args.decoder_num_heads, image_size=args.input_size,
                      num_frames=args.num_frames, include_head=not args.no_head, first_token=args.first_token,
                      overwrite=args.overwrite)
        else:
            convert(args.source, args.out, args.model_key)
    except OSError as e:
        if e.filename is None or not e.strerror:
            raise
        raise SystemExit(f"hf_weights.py: error: {describe(e)}") from None  # a path: one line, as every tool
    except (ValueError, CheckpointError) as e:  # bad input: one line, nothing written
        logger.error("%s", e)
        raise SystemExit(1) from None


if __name__ == "__main__":
    run_tool(main, "hf_weights.py")
