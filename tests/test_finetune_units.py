"""Fine-tuning pieces in isolation: view merging, metrics, soft targets, mixup, linear probe, EMA, kNN."""
import pytest
import torch
import torch.nn.functional as F

import modeling_finetune as mf
import weights
from datasets.mixup import Mixup, cutmix_box, smooth_one_hot
from engine_for_finetuning import Views, classification_metrics, merge_views, soft_target_cross_entropy
from evals.common import knn_classify, topk_accuracy
from helpers import FRAMES, SIZE, clips


def _views(rows):
    """rows of (index, segment, crop, label, output list)."""
    index, segment, crop, label, output = zip(*rows)
    return Views(torch.tensor(index), torch.tensor(segment), torch.tensor(crop), torch.tensor(label),
                 torch.tensor(output, dtype=torch.float32))


def test_merge_views_averages_each_video_and_drops_repeated_keys():
    views = _views([
        (3, 0, 0, 1, [0.2, 0.8]), (0, 0, 0, 0, [1.0, 0.0]), (3, 1, 0, 1, [0.6, 0.4]),
        (0, 0, 1, 0, [0.5, 0.5]),
        (0, 0, 0, 0, [9.0, 9.0]),  # padding duplicate of (0, 0, 0): the first occurrence wins
    ])
    videos = merge_views(views)
    assert videos.index.tolist() == [0, 3]
    assert videos.label.tolist() == [0, 1]
    assert videos.num_views.tolist() == [2, 2]
    torch.testing.assert_close(videos.output, torch.tensor([[0.75, 0.25], [0.4, 0.6]]))


def test_merge_views_is_independent_of_row_order():
    g = torch.Generator().manual_seed(0)
    n = 60
    views = Views(torch.arange(n) // 6, torch.arange(n) % 6 // 3, torch.arange(n) % 3, torch.arange(n) // 6 % 4,
                  torch.rand(n, 5, generator=g))
    perm = torch.randperm(n, generator=g)
    a, b = merge_views(views), merge_views(Views(*(f[perm] for f in views)))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert a.num_views.tolist() == [6] * 10


def test_classification_metrics_known_values():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]])
    labels = torch.tensor([0, 1, 1, 1])
    m = classification_metrics(probs, labels)
    assert m["acc1"] == pytest.approx(50.0)  # rows 0 and 3
    assert m["acc5"] == pytest.approx(100.0)  # 3 classes: top-5 holds everything
    assert m["mean_class_acc"] == pytest.approx((100.0 + 100.0 / 3) / 2)  # class 0: 1/1, class 1: 1/3
    assert m["num_videos"] == 4


def test_soft_target_cross_entropy_matches_hard_and_smoothed_labels():
    logits, labels = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])
    torch.testing.assert_close(soft_target_cross_entropy(logits, F.one_hot(labels, 5).float()),
                               F.cross_entropy(logits, labels))
    torch.testing.assert_close(soft_target_cross_entropy(logits, smooth_one_hot(labels, 5, 0.1)),
                               F.cross_entropy(logits, labels, label_smoothing=0.1))


def test_mixup_batch_mode_mixes_pixels_and_targets_with_one_weight():
    torch.manual_seed(0)
    videos, labels = torch.randn(4, 3, 2, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, targets = Mixup(4, mixup_alpha=1.0, cutmix_alpha=0.0, smoothing=0.0)(videos, labels)
    lam = targets[0, 0].item()
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * videos + (1 - lam) * videos.flip(0))
    torch.testing.assert_close(targets, lam * F.one_hot(labels, 4).float() + (1 - lam) * F.one_hot(labels.flip(0), 4))


def test_cutmix_pastes_one_box_on_every_frame_and_weights_by_area():
    torch.manual_seed(1)
    videos, labels = torch.randn(2, 3, 4, 16, 16), torch.tensor([0, 1])
    mixed, targets = Mixup(2, mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0)(videos, labels)
    changed = (mixed[0] != videos[0]).any(0)  # [T, H, W]
    assert changed.any() and all(torch.equal(changed[0], changed[t]) for t in range(4))
    area = changed[0].float().mean().item()
    assert targets[0, 0].item() == pytest.approx(1 - area)
    box = changed[0]  # [H, W]
    assert torch.equal(mixed[0][:, :, box], videos[1][:, :, box])
    assert torch.equal(mixed[0][:, :, ~box], videos[0][:, :, ~box])


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_mixup_per_clip_modes_give_valid_targets(mode):
    torch.manual_seed(2)
    videos, labels = torch.randn(6, 3, 2, 8, 8), torch.arange(6)
    mixed, targets = Mixup(6, mode=mode, smoothing=0.1)(videos, labels)
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    lam = targets[torch.arange(6), labels] - 0.1 / 6  # weight of the own label, smoothing removed
    if mode == "pair":  # clip j = 5 - i has the same weight on its own label as clip i
        torch.testing.assert_close(lam, lam.flip(0))
    with pytest.raises(ValueError, match="even batch"):
        Mixup(6, mode=mode)(videos[:5], labels[:5])


def test_cutmix_box_respects_minmax():
    torch.manual_seed(3)
    for _ in range(20):
        y0, y1, x0, x1 = cutmix_box(20, 30, 0.5, minmax=(0.25, 0.5))
        assert 5 <= y1 - y0 <= 10 and 7 <= x1 - x0 <= 15 and y1 <= 20 and x1 <= 30


def _tiny_vit(**kwargs):
    cfg = dict(img_size=SIZE, all_frames=FRAMES, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.5)
    cfg.update(kwargs)
    return mf.VisionTransformer(**cfg)


def test_linear_probe_trains_only_the_head_and_keeps_the_backbone_in_eval():
    torch.manual_seed(0)
    probe = mf.LinearProbe(_tiny_vit(num_classes=0), num_classes=3)
    before = {k: v.clone() for k, v in probe.backbone.state_dict().items()}
    probe.train()
    assert not probe.backbone.training and all(not m.training for m in probe.backbone.modules())
    assert probe.head.training
    trainable = [n for n, p in probe.named_parameters() if p.requires_grad]
    assert trainable == ["head.1.weight", "head.1.bias"]
    opt = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], lr=0.1)
    videos = clips(4)
    feats = probe.backbone.forward_features(videos)
    assert torch.equal(feats, probe.backbone.forward_features(videos))  # no drop path despite rate 0.5
    for _ in range(3):
        loss = F.cross_entropy(probe(videos), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = probe.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert probe.head[0].num_batches_tracked.item() == 3


def test_linear_probe_train_norms_option_trains_the_final_norm():
    probe = mf.LinearProbe(_tiny_vit(num_classes=0), num_classes=3, train_norms=True, batch_norm=False)
    trainable = sorted(n for n, p in probe.named_parameters() if p.requires_grad)
    assert trainable == ["backbone.fc_norm.bias", "backbone.fc_norm.weight", "head.bias", "head.weight"]
    probe(clips(2)).sum().backward()
    assert probe.backbone.fc_norm.weight.grad is not None


def test_model_ema_update_is_an_exponential_average():
    model = _tiny_vit(num_classes=3, drop_path_rate=0.0)
    ema = mf.ModelEma(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for name, p in ema.module.named_parameters():
        torch.testing.assert_close(p, start[name] + 0.1)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_load_pretrained_weights_strips_model_prefix(tmp_path):
    src = _tiny_vit(num_classes=3)
    path = str(tmp_path / "prefixed.pth")
    torch.save({"model": {f"student.{k}": v for k, v in src.state_dict().items()} | {"other.x": torch.ones(1)}}, path)
    dst = _tiny_vit(num_classes=3)
    report = weights.load_pretrained_weights(dst, path, model_prefix="student.")
    assert "other.x" in report["dropped"] and not report["initialised"]
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(ValueError, match="model_prefix"):
        weights.load_pretrained_weights(dst, path, model_prefix="teacher.")


def test_knn_weighted_votes_known_answer():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]]), dim=1)
    bank_labels = torch.tensor([0, 0, 1, 1, 2])
    queries = F.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    votes = knn_classify(bank, bank_labels, queries, num_classes=3, k=2, temperature=0.07)
    assert votes.argmax(1).tolist() == [0, 1]
    assert votes[0, 1] == 0 and votes[0, 2] == 0  # only the two nearest vote
    sims = queries[0] @ bank[:2].T
    torch.testing.assert_close(votes[0, 0], (sims / 0.07).exp().sum())
    # k above the bank size is capped; a lone far neighbour is outvoted by weight, not count.
    votes = knn_classify(bank, bank_labels, queries, num_classes=3, k=10, temperature=0.07)
    assert topk_accuracy(votes, torch.tensor([0, 1])) == {"top1": 100.0, "top5": 100.0}


def test_model_ema_averages_only_trained_parameters():
    probe = mf.LinearProbe(_tiny_vit(num_classes=0, drop_path_rate=0.0), num_classes=3)
    ema = mf.ModelEma(probe, decay=0.5)
    with torch.no_grad():
        probe.head[1].weight.add_(2.0)
    ema.update(probe)
    torch.testing.assert_close(ema.module.head[1].weight, probe.head[1].weight - 1.0)
    for a, b in zip(ema.module.backbone.parameters(), probe.backbone.parameters()):
        assert torch.equal(a, b)
