"""Backbone and pretraining model: shapes, registry hygiene, equivalences of the fast paths."""
import pytest
import timm
import torch

import modeling_finetune as mf
import modeling_pretrain as mp
from helpers import FRAMES, GRID, SIZE, clips, tiny_pretrain

SIZES = tuple(mf.VIT_SIZES)  # the registry's ViT sizes: every factory of both registries is tested


def test_registries_agree():
    # One finetune and one pretrain factory per size, and a decoder for each (modeling_pretrain.DECODER_SIZES).
    assert set(mf.MODELS) == {f"vit_{s}_patch16_224" for s in SIZES}
    assert set(mp.MODELS) == {f"pretrain_videomae_{s}_patch16_224" for s in SIZES}
    assert set(mp.DECODER_SIZES) == set(SIZES)


@pytest.mark.parametrize("size", SIZES)
def test_finetune_factory_shapes(size):
    width = mf.VIT_SIZES[size][0]
    device = "cpu" if width <= 768 else "meta"  # larger than ViT-B: shapes only
    with torch.device(device):
        model = mf.MODELS[f"vit_{size}_patch16_224"](num_classes=7, all_frames=FRAMES, img_size=SIZE,
                                                     drop_path_rate=0.1, init_scale=0.001)
        x = torch.randn(2, 3, FRAMES, SIZE, SIZE)
        assert model.forward_features(x).shape == (2, width)
        assert model(x).shape == (2, 7)
        assert len(model.blocks) == mf.VIT_SIZES[size][1]


@pytest.mark.parametrize("size", SIZES)
def test_pretrain_factory_shapes(size):
    # Built on the meta device and given uninitialised storage: real shapes without init cost.
    with torch.device("meta"):
        model = mp.MODELS[f"pretrain_videomae_{size}_patch16_224"](
            img_size=SIZE, all_frames=FRAMES, decoder_depth=1, decoder_num_classes=1536,
            target_type="pixel", loss_func="L2")
    model = model.to_empty(device="cpu")
    mask = torch.tensor([[True, False, True, False] * 2, [False, True, True, False] * 2])
    with torch.no_grad():
        out = model(torch.randn(2, 3, FRAMES, SIZE, SIZE), mask)
    assert out.pred.shape == (2, 4, 1536)
    assert out.logits_target is None


def test_timm_registry_untouched():
    # Importing our modules must not replace timm's image models of the same names.
    assert timm.models.is_model("vit_base_patch16_224")
    with torch.device("meta"):
        image_vit = timm.create_model("vit_base_patch16_224", pretrained=False)
    assert not isinstance(image_vit, mf.VisionTransformer)
    assert not timm.models.is_model("pretrain_videomae_base_patch16_224")
    assert set(mf.MODELS) == {f"vit_{s}_patch16_224" for s in SIZES}


def test_embed_tubes_equals_conv():
    embed = mf.PatchEmbed(patch_size=16, in_chans=3, embed_dim=8, tubelet_size=2)
    x = torch.randn(2, 3, 4, 32, 48)
    tubes = mf.patchify(x, 2, 16)
    assert tubes.shape == (2, 2 * 2 * 3, 2 * 16 * 16, 3)
    torch.testing.assert_close(embed.embed_tubes(tubes), embed(x), rtol=1e-5, atol=1e-5)


def test_patchify_layout():
    x = torch.arange(2 * 3 * 4 * 32 * 32, dtype=torch.float32).reshape(2, 3, 4, 32, 32)
    tubes = mf.patchify(x, 2, 16)  # token (t=1, h=0, w=1) is index 1*4 + 0*2 + 1 = 5
    expected = x[1, :, 2:4, 0:16, 16:32].permute(1, 2, 3, 0).reshape(-1, 3)
    torch.testing.assert_close(tubes[1, 5], expected)
    with pytest.raises(ValueError, match="not divisible"):
        mf.patchify(torch.randn(1, 3, 3, 32, 32), 2, 16)


def test_sincos_table_values():
    table = mf.sincos_position_table(5, 6)[0]
    pos, j = 3, 4  # even dim -> sin(pos / 10000^(2*(j//2)/d))
    assert table.shape == (5, 6)
    assert abs(table[pos, j].item() - torch.sin(torch.tensor(pos / 10000 ** (4 / 6))).item()) < 1e-6
    assert abs(table[pos, j + 1].item() - torch.cos(torch.tensor(pos / 10000 ** (4 / 6))).item()) < 1e-6


def test_visible_path_equals_full_path():
    model = mf.vit_small_patch16_224(num_classes=0, all_frames=FRAMES, img_size=SIZE, use_mean_pooling=False).eval()
    x = clips()
    everything = torch.ones(2, 8, dtype=torch.bool)
    torch.testing.assert_close(model.forward_tokens(x, visible=everything), model.forward_tokens(x),
                               rtol=1e-4, atol=1e-4)
    keep = torch.tensor([[True, False] * 4, [False, True] * 4])
    part = model.forward_tokens(x, visible=keep)
    assert part.shape == (2, 4, 384)


def test_other_frame_counts():
    # Positions follow the clip: a model built for 4 frames runs on 8 and matches one built for 8.
    m4 = mf.vit_small_patch16_224(num_classes=3, all_frames=4, img_size=SIZE).eval()
    m8 = mf.vit_small_patch16_224(num_classes=3, all_frames=8, img_size=SIZE).eval()
    m8.load_state_dict(m4.state_dict())
    x = torch.randn(1, 3, 8, SIZE, SIZE)
    torch.testing.assert_close(m4(x), m8(x))
    pre = tiny_pretrain("pixel", "L2", all_frames=8)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, ::2] = True
    assert pre(torch.randn(2, 3, 8, SIZE, SIZE), mask).pred.shape == (2, 8, 1536)


def test_gradient_checkpointing_same_result():
    x = clips()
    mask = torch.tensor([[True, False] * 4, [False, True] * 4])
    plain = tiny_pretrain("pixel", "L2")
    ckpt = tiny_pretrain("pixel", "L2", use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    out_plain, out_ckpt = plain(x, mask).pred, ckpt(x, mask).pred
    torch.testing.assert_close(out_plain, out_ckpt)
    out_plain.square().mean().backward()
    out_ckpt.square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_drop_path_only_in_training():
    model = mf.vit_small_patch16_224(num_classes=3, all_frames=FRAMES, img_size=SIZE, drop_path_rate=0.5)
    x = clips()
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_invalid_objective_rejected():
    # Every pair of the flags' choices outside VALID_OBJECTIVES (mlp + L2, pixel + SWAV) is refused.
    invalid = [(t, l) for t in mp.TARGET_TYPES for l in mp.LOSS_FUNCS if (t, l) not in mp.VALID_OBJECTIVES]
    assert ("mlp", "L2") in invalid and ("pixel", "SWAV") in invalid
    assert {t for t, _ in mp.VALID_OBJECTIVES} == set(mp.TARGET_TYPES)  # every target type has a loss
    for target_type, loss_func in invalid:
        with pytest.raises(ValueError, match="not a supported objective"):
            tiny_pretrain(target_type, loss_func)


def test_head_init_scale():
    a = mf.vit_small_patch16_224(num_classes=5, all_frames=FRAMES, img_size=SIZE, init_scale=1.0)
    torch.manual_seed(0)
    b = mf.vit_small_patch16_224(num_classes=5, all_frames=FRAMES, img_size=SIZE, init_scale=0.001)
    assert b.head.weight.abs().max() < 1e-3 * 0.1
    assert a.head.weight.abs().max() > 1e-2


def test_unequal_mask_counts_rejected():
    model = tiny_pretrain("pixel", "L2")
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, :5] = True
    with pytest.raises(ValueError, match=r"same number of tokens, got \[3, 5\]"):
        model(clips(), mask)


def test_prototype_scores_in_kept_buffers_equal_a_matmul():
    model = tiny_pretrain("mlp", "SWAV")
    x = torch.randn(10, model.prototypes.shape[1], requires_grad=True)
    kept = model.prototype_logits(x, 0.1, side="target")
    plain = model.prototype_logits(x, 0.1)
    torch.testing.assert_close(kept, plain, rtol=0, atol=0)
    g = torch.randn_like(plain)
    grads_kept = torch.autograd.grad(kept, (x, model.prototypes), g)
    grads_plain = torch.autograd.grad(plain, (x, model.prototypes), g)
    for a, b in zip(grads_kept, grads_plain, strict=True):
        torch.testing.assert_close(a, b)
    again = model.prototype_logits(torch.randn_like(x), 0.1, side="target")  # the same memory, new values
    assert again.data_ptr() == kept.data_ptr() and not torch.equal(again, plain)
    assert "_score_buffers" not in str(model.state_dict().keys())
