"""It learns: on generated moving-digit files, a short SIGMA-MLP pretraining learns its own objective
(the swapped-prediction loss falls well below its start), and a supervised model trained from
scratch beats chance on the motion labels. Small models and 400 steps each.

Both outcomes depend on a training trajectory, which CPU kernels change (ATen's vector ISA, oneDNN,
MKL, threads; an AMD Zen 4 and an Intel machine take different paths): each bound below was set
from the outcome's distribution over seeds and the kernel choices one machine can force,
measured by `bench/margins.py` (each test's docstring has the numbers). The digit probe's gain over
the random-init encoder is not asserted: at this size it is within what the kernels change
(see the first test's docstring); bench/margins.py --measure digit still measures it."""
import os
import types

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("sklearn", reason="the moving-digits data set and the probe need scikit-learn")

from datasets.annotations import read_annotations  # noqa: E402
from datasets.digits import make_digits_dataset  # noqa: E402
from datasets.video_dataset import AugmentConfig, ClipConfig, MaskConfig, VideoClipDataset, collate_clips  # noqa: E402
from engine_for_pretraining import Objective, compute_loss  # noqa: E402
from evals.common import features  # noqa: E402
from evals.probe import fit_probe  # noqa: E402
from modeling_finetune import VisionTransformer  # noqa: E402
from modeling_pretrain import PretrainVisionTransformer  # noqa: E402
from optim_factory import create_optimizer, param_groups  # noqa: E402

pytestmark = pytest.mark.slow  # minutes of training on the CPU

SIZE, FRAMES, RATE = 48, 8, 4
CLIP = ClipConfig(num_frames=FRAMES, sampling_rate=RATE, input_size=SIZE, short_side_size=SIZE)
PRETRAIN_STEPS, SUPERVISED_STEPS = 400, 400
# SIGMA's loss: mean of the last 50 of 400 steps over the first 50's; supervised motion top-1 (%).
# Set from the distributions in the tests' docstrings.
LOSS_RATIO_CEILING, MOTION_FLOOR = 0.5, 45.0


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("digits")))


def make_data(root: str) -> str:
    """The tests' moving-digit videos (200 train, 100 val) in `root`."""
    make_digits_dataset(root, num_train=200, num_val=100, num_test=0, frames=FRAMES * RATE, size=SIZE, seed=0)
    return root


def _train(model, loader, steps: int, lr: float, loss_fn) -> list:
    """`steps` AdamW steps; returns the loss of every step."""
    optimizer = create_optimizer(param_groups(model, 0.05), lr=lr, betas=(0.9, 0.95))
    model.train()
    step, losses = 0, []
    while step < steps:
        for batch in loader:
            for group in optimizer.param_groups:  # 20 steps of linear warm-up, then constant
                group["lr"] = lr * min(1.0, (step + 1) / 20)
            loss = loss_fn(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step == steps:
                return losses


def _digit_probe(encoder, root: str) -> float:
    """Val top-1 (%) of the logistic-regression probe on the encoder's frozen digit features."""
    args = types.SimpleNamespace(num_frames=FRAMES, sampling_rate=RATE, input_size=SIZE, short_side_size=SIZE,
                                 video_backend="decord", decode_short_side=None, seed=0, batch_size=50,
                                 num_workers=0)
    env = types.SimpleNamespace(world_size=1, rank=0, device=torch.device("cpu"))
    (xt, yt), (xv, yv) = (features(encoder, read_annotations(os.path.join(root, "digit", f"{s}.csv"), root), args,
                                   env, "dense", "fp32") for s in ("train", "val"))
    return fit_probe(xt.numpy(), yt.numpy(), xv.numpy(), yv.numpy(), Cs=[0.01, 0.1, 1.0, 10.0], folds=4,
                     max_iter=500, seed=0)["top1"]


def digit_probe_gain(root: str, seed: int, probe: bool = True) -> dict:
    """Digit-probe top-1 (%) of the random-init encoder ("before") and after 400 SIGMA-MLP steps
    ("after"; both None with probe=False), and the mean SIGMA loss of the first and last 50 steps."""
    torch.manual_seed(seed)
    model = PretrainVisionTransformer(img_size=SIZE, patch_size=16, encoder_embed_dim=96, encoder_depth=4,
                                      encoder_num_heads=3, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2,
                                      all_frames=FRAMES, target_type="mlp", loss_func="SWAV",
                                      num_prototypes=4)
    objective = Objective.of(model)
    before = _digit_probe(model.encoder, root) if probe else None
    samples = read_annotations(os.path.join(root, "pretrain.csv"), root, with_labels=False)
    dataset = VideoClipDataset(samples, "pretrain", CLIP, AugmentConfig(), MaskConfig(mask_ratio=0.75, grid=model.encoder.grid_size), seed=seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True, drop_last=True, collate_fn=collate_clips,
                                         generator=torch.Generator().manual_seed(seed))
    losses = _train(model, loader, PRETRAIN_STEPS, 1e-3,
                    lambda b: compute_loss(model, objective, b["video"], b["mask"])[0])
    return {"before": before, "after": _digit_probe(model.encoder, root) if probe else None,
            "loss_first": sum(losses[:50]) / 50, "loss_last": sum(losses[-50:]) / 50}


def motion_accuracy(root: str, seed: int) -> float:
    """Val top-1 (%) on the 4 motion directions of a ViT trained from scratch for 400 steps."""
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=SIZE, patch_size=16, num_classes=4, embed_dim=64, depth=2, num_heads=2,
                              all_frames=FRAMES)
    # No flips: a mirrored left-to-right video would keep its label.
    augment = AugmentConfig(scale=(0.5, 1.0), flip=False, auto_augment=None, reprob=0.0)
    splits = {s: VideoClipDataset(read_annotations(os.path.join(root, "direction", f"{s}.csv"), root), s, CLIP,
                                  augment, seed=seed) for s in ("train", "val")}
    loader = torch.utils.data.DataLoader(splits["train"], batch_size=16, shuffle=True, drop_last=True,
                                         collate_fn=collate_clips, generator=torch.Generator().manual_seed(seed))
    _train(model, loader, SUPERVISED_STEPS, 1e-3, lambda b: F.cross_entropy(model(b["video"]), b["label"]))
    model.eval()
    with torch.no_grad():
        batch = collate_clips([splits["val"][i] for i in range(len(splits["val"]))])
        return 100.0 * (model(batch["video"]).argmax(1) == batch["label"]).float().mean().item()


@pytest.mark.parametrize("seed", [0])
def test_short_sigma_pretraining_learns_its_objective_on_moving_digits(digits, seed):
    """400 SIGMA-MLP steps bring the loss to under half its start (last 50 steps over first 50).

    Loss ratio measured (bench/margins.py --measure digit_loss, 2-core AMD EPYC, AVX2, 1 thread),
    seed 0: 0.234 as is (2.58 -> 0.60), 0.217 with ATEN_CPU_CAPABILITY=default (2.60 -> 0.56),
    0.253 with MKL_CBWR=COMPATIBLE (2.58 -> 0.65).
    The bound 0.5 sits twice above the worst of them; the probe-free test also costs half the time.

    Not asserted: the digit probe's gain over the same encoder at random init. Seed 0 gave +10
    points on the Intel machine where the test was written (seeds 1, 2: +13, +6), +2 on an AMD
    Zen 4 (AVX-512; the failure of issue 25: 16.0 -> 18.0) and 0 on this AMD EPYC (AVX2:
    16.0 -> 16.0): no margin above 0 holds on every x86 CPU at this size.
    """
    m = digit_probe_gain(digits, seed, probe=False)
    assert m["loss_last"] < LOSS_RATIO_CEILING * m["loss_first"], m


def test_supervised_training_from_scratch_beats_chance_on_motion(digits):
    """Val top-1 over chance (25) after 400 steps from scratch.

    Measured (bench/margins.py --measure motion, 2-core AMD EPYC, AVX2, 1 thread): seed 0: 60 as
    is, 68 with ATEN_CPU_CAPABILITY=default, 72 with MKL_CBWR=COMPATIBLE; seed 1: 72 and 81 with
    those two. Where the test was written, seeds 0-3: 62, 55, 67, 60. The kernels move it by up to
    12 points; the floor 45 sits 10 points under the worst value seen (55).
    """
    accuracy = motion_accuracy(digits, 0)
    assert accuracy >= MOTION_FLOOR, accuracy  # chance: 25
