"""Attentive probe: V-JEPA layout and init, one optimizer over a grid of heads, and learning a token task."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from attentive_probe import (VJEPA2_GRID, AttentiveClassifier, AttentiveProbeGrid, grid_loss, grid_top1,
                             select_best)


def planted_tokens(n: int, num_classes: int, dim: int = 32, tokens: int = 16, planted: int = 4, strength: float = 4.0,
                   seed: int = 0):
    """Tokens [n, tokens, dim] of unit noise; class c adds direction c to a random subset of `planted` tokens."""
    g = torch.Generator().manual_seed(seed)
    directions = F.normalize(torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)), dim=1)
    labels = torch.randint(num_classes, (n,), generator=g)
    x = torch.randn(n, tokens, dim, generator=g)
    where = torch.rand(n, tokens, generator=g).argsort(1)[:, :planted]  # [n, planted] distinct tokens
    x[torch.arange(n)[:, None], where] += strength * directions[labels][:, None]
    return x, labels


def test_grid_shapes_groups_and_every_parameter_gets_a_gradient():
    grid = AttentiveProbeGrid(num_classes=5, dim=32, grid=[(1.0, 0.01), (0.3, 0.1), (3.0, 0.0)], num_heads=4, depth=2)
    tokens = torch.randn(6, 10, 32)
    logits = grid(tokens)
    assert logits.shape == (3, 6, 5)
    loss, per_head = grid_loss(logits, torch.randint(5, (6,)))
    loss.backward()
    assert per_head.shape == (3,) and not per_head.requires_grad
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in grid.parameters())
    groups = grid.param_groups()
    assert [(g["head"], g["lr_scale"], g["wd_value"]) for g in groups] == [(0, 1.0, 0.01), (1, 0.3, 0.1), (2, 3.0, 0.0)]
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(list(grid.parameters())) == len({id(p) for p in grouped})
    split = grid.param_groups(no_decay_1d=True)
    assert len(split) == 6 and all(g["wd_value"] == 0.0 for g in split if g["group_name"].endswith("no_decay"))
    no_decay = {id(p) for g in split if g["group_name"].endswith("no_decay") for p in g["params"]}
    assert id(grid.heads[0].pooler.query_tokens) in no_decay and id(grid.heads[0].linear.bias) in no_decay
    assert id(grid.heads[0].linear.weight) not in no_decay


def test_vjepa_init_and_grid():
    torch.manual_seed(0)
    clf = AttentiveClassifier(dim=64, num_classes=3, num_heads=4, depth=3)
    pooler = clf.pooler
    assert pooler.query_tokens.std().item() == pytest.approx(0.02, rel=0.3)
    assert torch.count_nonzero(pooler.cross_attention_block.xattn.q.bias) == 0
    # Residual projections divided by sqrt(2 * layer); the cross block's by sqrt(2 * (depth - 1)).
    for layer, blk in enumerate(pooler.blocks, start=1):
        assert blk.mlp.fc2.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * layer), rel=0.05)
    assert pooler.cross_attention_block.mlp.fc2.weight.std().item() == pytest.approx(0.02 / 2, rel=0.05)
    assert pooler.cross_attention_block.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert len(VJEPA2_GRID) == 20 and (5.0, 0.01) in VJEPA2_GRID and (0.1, 0.8) in VJEPA2_GRID
    with pytest.raises(ValueError, match="multiple of num_heads"):
        AttentiveClassifier(dim=30, num_classes=3, num_heads=4)
    with pytest.raises(ValueError, match="lr_scale > 0"):
        AttentiveProbeGrid(3, 32, grid=[(0.0, 0.1)], num_heads=4)


def test_one_optimizer_over_the_grid_equals_training_each_head_alone():
    torch.manual_seed(0)
    base_lr, grid_spec = 1e-2, [(1.0, 0.05), (0.3, 0.4)]
    grid = AttentiveProbeGrid(num_classes=4, dim=16, grid=grid_spec, num_heads=2)
    alone = [copy.deepcopy(head) for head in grid.heads]
    tokens, labels = torch.randn(8, 6, 16), torch.randint(4, (8,))

    # The grid: one AdamW over its groups, lr = base * lr_scale and weight decay = wd_value.
    opt = torch.optim.AdamW([{**g, "lr": base_lr * g["lr_scale"], "weight_decay": g["wd_value"]}
                             for g in grid.param_groups()])
    for _ in range(3):
        opt.zero_grad()
        grid_loss(grid(tokens), labels)[0].backward()
        if _ == 0:
            grads = [[p.grad.clone() for p in head.parameters()] for head in grid.heads]
        opt.step()
    for h, (head, (lr_scale, wd)) in enumerate(zip(alone, grid_spec)):
        own = torch.optim.AdamW(head.parameters(), lr=base_lr * lr_scale, weight_decay=wd)
        for step in range(3):
            own.zero_grad()
            F.cross_entropy(head(tokens), labels).backward()
            if step == 0:
                for g_grid, p in zip(grads[h], head.parameters()):
                    torch.testing.assert_close(g_grid, p.grad)  # exactly its own gradient
            own.step()
        for p_grid, p_alone in zip(grid.heads[h].parameters(), head.parameters()):
            torch.testing.assert_close(p_grid, p_alone)


def _train(model, x, y, steps: int, lr: float, forward):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = torch.randint(x.shape[0], (64,), generator=g)
        opt.zero_grad()
        forward(x[batch], y[batch]).backward()
        opt.step()


def test_attentive_probe_learns_planted_directions_like_a_mean_pooled_linear_probe():
    torch.manual_seed(0)
    (x, y), (xv, yv) = planted_tokens(2000, 4, seed=0), planted_tokens(500, 4, seed=1)
    grid = AttentiveProbeGrid(num_classes=4, dim=32, grid=[(1.0, 0.0), (0.01, 0.0)], num_heads=4)
    lr = 3e-3
    groups = [{**g, "lr": lr * g["lr_scale"]} for g in grid.param_groups()]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        batch = torch.randint(x.shape[0], (64,), generator=g)
        opt.zero_grad()
        grid_loss(grid(x[batch]), y[batch])[0].backward()
        opt.step()
    with torch.no_grad():
        top1 = grid_top1(grid(xv), yv)
    best, metrics = select_best([{"top1": v} for v in top1.tolist()])
    assert best == 0 and metrics["top1"] > 95, top1  # the tiny-lr head has barely moved
    assert top1[1] < top1[0]
    linear = torch.nn.Linear(32, 4)
    _train(linear, x, y, 150, 3e-2, lambda xb, yb: F.cross_entropy(linear(xb.mean(1)), yb))
    with torch.no_grad():
        assert (linear(xv.mean(1)).argmax(1) == yv).float().mean() > 0.95


def test_select_best():
    heads = [{"top1": 50.0, "mae": 0.4}, {"top1": 70.0, "mae": 0.2}, {"top1": 70.0, "mae": 0.2}]
    assert select_best(heads) == (1, heads[1])  # ties: the first
    assert select_best(heads, key="mae", higher_is_better=False)[0] == 1
    with pytest.raises(KeyError, match="'mAP' missing for heads \\[0, 1, 2\\]"):
        select_best(heads, key="mAP")
    with pytest.raises(ValueError, match="NaN"):
        select_best([{"top1": float("nan")}])
    with pytest.raises(ValueError, match="at least one"):
        select_best([])
