"""Published state-dict layout and load_pretrained_weights."""
import os
import re

import pytest
import torch

import modeling_finetune as mf
import modeling_pretrain as mp
import weights
from checkpointing import CheckpointError
from helpers import FRAMES, SIZE, clips

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "checkpoint_keys.txt")

# Section titles of checkpoint_keys.txt -> the factory call that must reproduce them.
CONFIGS = {
    "pretrain ViT-S, SIGMA-MLP": lambda: mp.pretrain_videomae_small_patch16_224(
        target_type="mlp", loss_func="SWAV", decoder_num_classes=256, num_prototypes=3000, decoder_depth=4),
    "pretrain ViT-B, SIGMA-DINO": lambda: mp.pretrain_videomae_base_patch16_224(
        target_type="dino_v1", loss_func="SWAV", decoder_num_classes=768, num_prototypes=3000, decoder_depth=4),
    "pretrain ViT-B, VideoMAE pixel": lambda: mp.pretrain_videomae_base_patch16_224(
        target_type="pixel", loss_func="L2", decoder_num_classes=1536, decoder_depth=4),
    "finetune ViT-B": lambda: mf.vit_base_patch16_224(num_classes=174, all_frames=16),
}


def _reference_sections():
    sections, current = {}, None
    for line in open(REFERENCE):
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), {})
        elif current is not None and "\t" in line:
            name, shape = line.rstrip("\n").split("\t")
            current[name] = tuple(int(d) for d in re.findall(r"\d+", shape))
    return sections


@pytest.mark.parametrize("prefix", list(CONFIGS))
def test_state_dict_matches_published(prefix):
    sections = _reference_sections()
    title = next(t for t in sections if t.startswith(prefix))
    with torch.device("meta"):
        model = CONFIGS[prefix]()
    ours, depths = {}, {}
    for name, tensor in model.state_dict().items():
        generic = re.sub(r"blocks\.(\d+)\.", "blocks.0.", name)
        match = re.match(r"(.*blocks)\.(\d+)\.", name)
        if match:
            depths.setdefault(match.group(1), set()).add(int(match.group(2)))
        assert ours.setdefault(generic, tuple(tensor.shape)) == tuple(tensor.shape)
    assert ours == sections[title]
    expected_depths = {"encoder.blocks": 12, "decoder.blocks": 4, "blocks": 12}
    assert {k: len(v) for k, v in depths.items()} == {k: expected_depths[k] for k in depths}


def _pretrained(tmp_path, wrap=lambda sd: {"model": sd}, **kwargs):
    model = mp.pretrain_videomae_small_patch16_224(img_size=SIZE, all_frames=FRAMES, decoder_depth=1,
                                                   decoder_num_classes=64, target_type="mlp", loss_func="SWAV",
                                                   num_prototypes=16, **kwargs)
    path = str(tmp_path / "pretrain.pth")
    torch.save(wrap(model.state_dict()), path)
    return model, path


def _finetune(**kwargs):
    cfg = dict(num_classes=5, all_frames=FRAMES, img_size=SIZE)
    cfg.update(kwargs)
    return mf.vit_small_patch16_224(**cfg)


def test_loaded_backbone_reproduces_encoder(tmp_path):
    pre, path = _pretrained(tmp_path)
    model = _finetune(use_mean_pooling=False).eval()
    report = weights.load_pretrained_weights(model, path)
    assert report["initialised"] == ["head.bias", "head.weight"]
    assert "prototypes" in report["dropped"] and "head.0.weight" in report["dropped"]
    assert any(k.startswith("decoder.") for k in report["dropped"])
    x = clips()
    everything = torch.ones(2, 8, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_tokens(x), pre.eval().encoder.forward_tokens(x, visible=everything),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wrap", [
    lambda sd: {"module": sd},
    lambda sd: {"model": {"module." + k: v for k, v in sd.items()}},
    lambda sd: {"model": {k.replace("encoder.", "backbone.", 1): v for k, v in sd.items()}},
    lambda sd: sd,
], ids=["module-key", "ddp-prefix", "backbone-prefix", "bare"])
def test_checkpoint_layouts(tmp_path, wrap):
    pre, path = _pretrained(tmp_path, wrap)
    model = _finetune()
    report = weights.load_pretrained_weights(model, path)
    assert "blocks.0.attn.qkv.weight" in report["loaded"]
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, pre.encoder.blocks[1].mlp.fc2.weight)


def test_head_kept_when_shapes_match_dropped_otherwise(tmp_path):
    finetuned = _finetune()
    path = str(tmp_path / "finetuned.pth")
    torch.save({"model": finetuned.state_dict()}, path)
    same = _finetune()
    assert "head.weight" in weights.load_pretrained_weights(same, path)["loaded"]
    torch.testing.assert_close(same.head.weight, finetuned.head.weight)
    other = _finetune(num_classes=9)
    report = weights.load_pretrained_weights(other, path)
    assert "head.weight" in report["dropped"] and "head.weight" in report["initialised"]


@pytest.mark.parametrize("frames,size", [(8, SIZE), (FRAMES, 64)])
def test_learnable_positions_resized(tmp_path, frames, size):
    src = _finetune(use_learnable_pos_emb=True)
    with torch.no_grad():  # constant over time and space: must survive any resize unchanged
        src.pos_embed.copy_(torch.linspace(-1, 1, src.embed_dim).expand_as(src.pos_embed))
    path = str(tmp_path / "learnable.pth")
    torch.save({"model": src.state_dict()}, path)
    dst = _finetune(use_learnable_pos_emb=True, all_frames=frames, img_size=size)
    weights.load_pretrained_weights(dst, path)
    assert dst.pos_embed.shape[1] == (frames // 2) * (size // 16) ** 2
    torch.testing.assert_close(dst.pos_embed, torch.linspace(-1, 1, dst.embed_dim).expand_as(dst.pos_embed),
                               rtol=1e-4, atol=1e-4)


def test_wrong_model_size_is_a_clear_error(tmp_path):
    _, path = _pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"pretrain.pth: checkpoint is ViT-S \(embed 384, 12 blocks\); --model asks "
                                         r"for ViT-B \(embed 768, 12 blocks\) \(--model vit_small_patch16_224 fits it\)$"):
        weights.load_pretrained_weights(mf.vit_base_patch16_224(num_classes=5, all_frames=FRAMES, img_size=SIZE), path)


def test_missing_backbone_weights_is_an_error(tmp_path):
    model, path = _pretrained(tmp_path)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.blocks.11.")}
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError, match=r"lacks backbone weights \['blocks\.11\."):
        weights.load_pretrained_weights(_finetune(), path)


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.pth: no such file"):
        weights.load_pretrained_weights(_finetune(), str(tmp_path / "nowhere.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pth is not a PyTorch checkpoint"):
        weights.load_pretrained_weights(_finetune(), str(corrupt))
    pickled = tmp_path / "object.pth"
    torch.save({"model": _Unsafe()}, pickled)  # arbitrary objects are refused (weights_only)
    with pytest.raises(CheckpointError, match=r"object.pth holds pickled code or objects \(.*_Unsafe\)") as info:
        weights.load_pretrained_weights(_finetune(), str(pickled))
    assert "weights_only" not in str(info.value)  # never suggest turning the guard off


class _Unsafe:
    pass
