"""hf_weights: transformers VideoMAE both ways, VideoMAEv2 Hub encoders, safetensors (tiny random models)."""
import json
import os

import pytest
import torch

import hf_weights
import modeling_finetune as mf
import weights
from helpers import FRAMES, SIZE, tiny_pretrain

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

TINY = dict(image_size=SIZE, patch_size=16, num_frames=FRAMES, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=64)


def _ours(**kwargs) -> mf.VisionTransformer:
    cfg = dict(img_size=SIZE, patch_size=16, num_classes=5, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
               all_frames=FRAMES)
    cfg.update(kwargs)
    return mf.VisionTransformer(**cfg).eval()


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Move every weight off its initial value (unit norms, zero biases would hide a swapped tensor)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _hf(cls, tmp_path, name: str, **config):
    model = _perturb(cls(transformers.VideoMAEConfig(**{**TINY, **config})))
    path = str(tmp_path / name)
    model.save_pretrained(path)
    return model, path


def _clips() -> torch.Tensor:
    return torch.randn(2, 3, FRAMES, SIZE, SIZE)


def _hf_input(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 1, 3, 4)  # ours [B, C, T, H, W] -> transformers' [B, T, C, H, W]


@pytest.mark.parametrize("mean_pooling", [True, False], ids=["mean", "first_token"])
def test_load_transformers_classifier(tmp_path, mean_pooling):
    hf, path = _hf(transformers.VideoMAEForVideoClassification, tmp_path, "cls", num_labels=5,
                   use_mean_pooling=mean_pooling)
    assert weights.pooling_for_frozen_features(path) is mean_pooling
    model = _ours(use_mean_pooling=mean_pooling)
    report = weights.load_pretrained_weights(model, path)
    assert report["initialised"] == [] and report["dropped"] == []
    x = _clips()
    with torch.no_grad():
        tokens = hf.videomae(_hf_input(x)).last_hidden_state  # [B, N, D]
        pooled = hf.fc_norm(tokens.mean(1)) if mean_pooling else tokens[:, 0]
        torch.testing.assert_close(model.forward_features(x), pooled, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x), hf(_hf_input(x)).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mean_pooling", [True, False], ids=["mean", "first_token"])
def test_load_transformers_encoder_and_pretraining(tmp_path, mean_pooling):
    x = _clips()
    for cls in (transformers.VideoMAEModel, transformers.VideoMAEForPreTraining):
        hf, path = _hf(cls, tmp_path, cls.__name__, use_mean_pooling=mean_pooling)
        encoder = hf if cls is transformers.VideoMAEModel else hf.videomae
        model = _ours(num_classes=0, use_mean_pooling=weights.pooling_for_frozen_features(path))
        report = weights.load_pretrained_weights(model, path)
        assert all(k.startswith("fc_norm.") for k in report["initialised"])
        assert any(k.startswith("decoder.") for k in report["dropped"]) == (cls is transformers.VideoMAEForPreTraining)
        with torch.no_grad():
            tokens = encoder(_hf_input(x)).last_hidden_state  # [B, N, D]
            torch.testing.assert_close(model.forward_tokens(x), tokens, atol=1e-5, rtol=1e-5)
            expected = torch.nn.functional.layer_norm(tokens.mean(1), (32,), eps=1e-5) if mean_pooling else tokens[:, 0]
            torch.testing.assert_close(model.forward_features(x), expected, atol=1e-5, rtol=1e-5)


def test_pretraining_decoder_and_5x_names(tmp_path):
    """VideoMAEForPreTraining reads into our pretraining model whole; query.bias / value.bias names (what
    transformers 5.x holds in memory) and pytorch_model.bin read like the saved q_bias / v_bias."""
    hf, path = _hf(transformers.VideoMAEForPreTraining, tmp_path, "pre", use_mean_pooling=False,
                   intermediate_size=128, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                   decoder_num_attention_heads=2, decoder_intermediate_size=64)
    state, hub = hf_weights.read_checkpoint(path)
    assert hub.source == "transformers VideoMAEForPreTraining" and not hub.use_mean_pooling
    ours = tiny_pretrain(target_type="pixel", loss_func="L2")
    ours.load_state_dict(state, strict=True)
    assert torch.equal(ours.encoder.blocks[1].attn.qkv.weight[32:64],
                       hf.videomae.encoder.layer[1].attention.attention.key.weight)
    assert torch.equal(ours.decoder.blocks[0].attn.v_bias, hf.decoder.decoder_layers[0].attention.attention.value.bias)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")  # query.bias names
    (bin_dir / "config.json").write_text((tmp_path / "pre" / "config.json").read_text())
    again, _ = hf_weights.read_checkpoint(str(bin_dir / "pytorch_model.bin"))
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)


def _save_ours(tmp_path, net: torch.nn.Module, name: str, **config) -> str:
    path = str(tmp_path / name)
    torch.save({"model": net.state_dict(), "epoch": 1, "step": 1,
                "config": {"input_size": SIZE, "num_frames": FRAMES, **config}}, path)
    return path


def test_export_classifier(tmp_path):
    model = _perturb(_ours())
    out = str(tmp_path / "hf")
    report = hf_weights.export_hf(_save_ours(tmp_path, model, "ft.pth"), out, num_heads=2)
    assert report["architecture"] == "VideoMAEForVideoClassification" and report["extras"] == []
    hf, info = transformers.VideoMAEForVideoClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    encoder, info = transformers.VideoMAEModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    x = _clips()
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(_hf_input(x)).last_hidden_state, model.forward_tokens(x),
                                   atol=1e-5, rtol=1e-5)
        # transformers' fc_norm has eps 1e-5, ours 1e-6: the only difference between the two.
        model.fc_norm.eps = hf_weights.HF_FC_NORM_EPS
        torch.testing.assert_close(hf.eval()(_hf_input(x)).logits, model(x), atol=1e-5, rtol=1e-5)
    back = _ours()
    weights.load_pretrained_weights(back, out)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("objective", [("mlp", "SWAV"), ("pixel", "L2")], ids=["sigma_mlp", "videomae_pixel"])
def test_export_pretraining_round_trip(tmp_path, objective):
    model = _perturb(tiny_pretrain(*objective))
    out = str(tmp_path / "hf")
    ckpt = _save_ours(tmp_path, model, "pretrain.pth", model="pretrain_videomae_tiny_patch16_224")
    report = hf_weights.export_hf(ckpt, out, num_heads=2, decoder_num_heads=2)
    sigma = objective[0] == "mlp"
    assert report["architecture"] == ("VideoMAEModel" if sigma else "VideoMAEForPreTraining")
    assert (hf_weights.EXTRAS_NAME in report["files"]) == sigma
    if not sigma:
        _, info = transformers.VideoMAEForPreTraining.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
    encoder, info = transformers.VideoMAEModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"]
    x = _clips()
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(_hf_input(x)).last_hidden_state, model.encoder.forward_tokens(x),
                                   atol=1e-5, rtol=1e-5)
    state, _ = hf_weights.read_checkpoint(out)
    own = model.state_dict()
    assert state.keys() == own.keys()
    assert all(torch.equal(state[k], own[k]) for k in own)


def _edit_config(path: str, **changes) -> None:
    config_path = os.path.join(path, "config.json")
    config = json.load(open(config_path))
    config.update(changes)
    json.dump(config, open(config_path, "w"))


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
    ({"qkv_bias": False, "qv_bias": False}, "qv_bias=False"),
    ({"model_type": "vivit"}, "model_type='vivit'"),
    ({"num_attention_heads": 4}, "num_attention_heads=4 (the model has num_heads 2)"),
    # a config that does not describe the tensors beside it is named before any model is asked
    ({"patch_size": 8}, "config.json does not describe its weights: patch_size=8 but the tensors have patch_size 16"),
    ({"hidden_size": 1024}, "hidden_size=1024 but the tensors have embed_dim 32"),
])
def test_unsupported_config_refused(tmp_path, change, message):
    _, path = _hf(transformers.VideoMAEModel, tmp_path, "enc")
    _edit_config(path, **change)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        weights.load_pretrained_weights(_ours(num_classes=0), path)


def test_wrong_size_refused(tmp_path):
    _, path = _hf(transformers.VideoMAEModel, tmp_path, "enc", hidden_size=64, intermediate_size=128)
    with pytest.raises(ValueError, match=r"hidden_size=64 \(the model has embed_dim 32\)"):
        weights.load_pretrained_weights(_ours(num_classes=0), path)


def test_export_refuses_mean_of_normed_tokens_head(tmp_path):
    model = _ours(use_mean_pooling=False)  # --use_cls: final norm, then the mean: no transformers equivalent
    ckpt = _save_ours(tmp_path, model, "cls.pth")
    with pytest.raises(ValueError, match="mean of normed tokens"):
        hf_weights.export_hf(ckpt, str(tmp_path / "hf"), num_heads=2)
    report = hf_weights.export_hf(ckpt, str(tmp_path / "hf"), num_heads=2, include_head=False)
    assert report["architecture"] == "VideoMAEModel"


def _videomae_v2(tmp_path, source: mf.VisionTransformer, **model_config) -> str:
    """A VideoMAEv2 Hub folder: custom-code config.json with model_config, ``model.``-prefixed safetensors."""
    path = tmp_path / "v2"
    path.mkdir()
    hf_weights.write_safetensors({"model." + k: v for k, v in source.state_dict().items()},
                                 str(path / "model.safetensors"))
    config = {"model_type": "VideoMAEv2_Base", "architectures": ["VideoMAEv2_Base"],
              "auto_map": {"AutoModel": "modeling_videomaev2.VideoMAEv2"},
              "model_config": {"img_size": SIZE, "patch_size": 8, "in_chans": 3, "num_classes": 0, "embed_dim": 44,
                               "depth": 2, "num_heads": 2, "mlp_ratio": 48 / 11, "qkv_bias": True, "qk_scale": None,
                               "norm_layer": "nn.LayerNorm", "layer_norm_eps": 1e-6, "init_values": 0.0,
                               "use_learnable_pos_emb": False, "tubelet_size": 2, "use_mean_pooling": True,
                               "num_frames": FRAMES, "cos_attn": False, **model_config}}
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize("mean_pooling", [True, False], ids=["mean", "first_token"])
def test_videomae_v2_encoder(tmp_path, mean_pooling):
    # ViT-g's shape in small: an MLP ratio of 48/11 (44 -> 192) and 8-pixel patches.
    source = _perturb(_ours(embed_dim=44, patch_size=8, mlp_ratio=48 / 11, num_classes=0,
                            use_mean_pooling=mean_pooling))
    path = _videomae_v2(tmp_path, source, use_mean_pooling=mean_pooling)
    kwargs = weights.backbone_kwargs(path)
    model = mf.VisionTransformer(**kwargs).eval()
    assert model.blocks[0].mlp.fc1.out_features == 192 and kwargs["use_mean_pooling"] is mean_pooling
    report = weights.load_pretrained_weights(model, path)
    assert report["initialised"] == [] and report["dropped"] == []
    x = _clips()
    with torch.no_grad():
        tokens = source.forward_tokens(x)  # [B, N, D], through the final norm when not mean pooling
        expected = source.forward_features(x) if mean_pooling else tokens[:, 0]
        torch.testing.assert_close(model.forward_features(x), expected, atol=1e-5, rtol=1e-5)


def test_videomae_v2_unsupported_refused(tmp_path):
    source = _ours(embed_dim=44, patch_size=8, mlp_ratio=48 / 11, num_classes=0)
    path = _videomae_v2(tmp_path, source, init_values=0.1)
    with pytest.raises(ValueError, match=r"model_config.init_values=0.1 .*layer scale"):
        weights.load_pretrained_weights(_ours(embed_dim=44, patch_size=8, mlp_ratio=48 / 11, num_classes=0), path)
    with pytest.raises(ValueError, match=r"model_config.embed_dim=44 \(the model has embed_dim 32\)"):
        _edit_config(path, model_config={**json.load(open(os.path.join(path, "config.json")))["model_config"],
                                         "init_values": 0.0})
        weights.load_pretrained_weights(_ours(num_classes=0), path)


def test_safetensors_weights(tmp_path):
    model = _perturb(_ours())
    ckpt = _save_ours(tmp_path, model, "ft.pth")
    out = str(tmp_path / "ft.safetensors")
    assert hf_weights.convert(ckpt, out) == len(model.state_dict())
    assert set(hf_weights.read_weights(out)) == set(model.state_dict())
    back = _ours()
    report = weights.load_pretrained_weights(back, out)
    assert report["initialised"] == [] and weights.pooling_for_frozen_features(out)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="bad.safetensors"):
        hf_weights.read_weights(str(tmp_path / "bad.safetensors"))


def test_dinov2_teacher_from_safetensors(tmp_path):
    """A timm Hub-layout DINOv2 .safetensors loads through build_teacher (--teacher_ckpt x.safetensors)."""
    import timm
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, img_size=28)
    path = str(tmp_path / "model.safetensors")
    hf_weights.write_safetensors(vit.state_dict(), path)
    teacher = weights.build_teacher("dino_v2", "dino_s", img_size=28, checkpoint=path, patch_size=14)
    assert torch.equal(teacher.vit.blocks[3].attn.qkv.weight, vit.blocks[3].attn.qkv.weight)
    assert torch.equal(teacher.vit.reg_token, vit.reg_token)


def test_sharded_and_configless_files(tmp_path):
    hf, path = _hf(transformers.VideoMAEForVideoClassification, tmp_path, "cls", num_labels=5)
    sharded = str(tmp_path / "sharded")
    hf.save_pretrained(sharded, max_shard_size="20KB")
    assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
    whole, _ = hf_weights.read_checkpoint(path)
    parts, hub = hf_weights.read_checkpoint(sharded)
    assert hub.value("eps") == 1e-12 and all(torch.equal(parts[k], whole[k]) for k in whole)
    bare = tmp_path / "bare"
    bare.mkdir()
    os.replace(os.path.join(path, "model.safetensors"), bare / "weights.safetensors")  # no config.json beside it
    model = _ours()
    assert weights.load_pretrained_weights(model, str(bare / "weights.safetensors"))["initialised"] == []
    x = _clips()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(_hf_input(x)).logits, atol=1e-4, rtol=1e-4)  # eps: the model's


@pytest.mark.e2e
def test_cli(tmp_path, capsys, caplog):
    model = _perturb(tiny_pretrain())
    ckpt = _save_ours(tmp_path, model, "pretrain.pth")
    out = str(tmp_path / "hf")
    with pytest.raises(SystemExit) as stop:  # one logged line, exit status 1, nothing written
        hf_weights.main(["export", ckpt, out])
    assert stop.value.code == 1 and not os.path.exists(out)
    assert "cannot tell the attention heads of the 32-wide encoder" in caplog.records[-1].getMessage()
    hf_weights.main(["export", ckpt, out, "--num_heads", "2"])
    hf_weights.main(["convert", out, str(tmp_path / "back.safetensors")])
    back = hf_weights.read_weights(str(tmp_path / "back.safetensors"))
    assert back.keys() == model.state_dict().keys()
    with pytest.raises(SystemExit):
        hf_weights.main(["export", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: model|module)" in text and "without the classifier (default: False)" in text


def test_knn_encoder_from_transformers_folder(tmp_path):
    """The drivers' path: evals.common.load_encoder (evals.knn, probe, segmentation) on a first-token ViT-Ti
    checkpoint."""
    import argparse

    from evals.common import load_encoder
    hf, path = _hf(transformers.VideoMAEModel, tmp_path, "vit_ti", hidden_size=192, num_hidden_layers=12,
                   num_attention_heads=3, intermediate_size=768, use_mean_pooling=False)
    args = argparse.Namespace(finetune=path, model_key="model|module", model_prefix="", model="vit_tiny_patch16_224",
                              input_size=SIZE, num_frames=FRAMES)
    encoder = load_encoder(args, torch.device("cpu")).eval()
    x = _clips()
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), hf(_hf_input(x)).last_hidden_state[:, 0], atol=1e-5, rtol=1e-5)
