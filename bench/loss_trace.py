"""Loss trace of every pretraining objective: the check that a refactor changed no number.

For each (target_type, loss_func) the model accepts, and SIGMA-MLP with soft codes, builds ViT-Ti
(4 frames of 112x112, 64 prototypes) from a fixed seed, a random DINO teacher for dino_* targets (written to a file and
read back through the teacher loader), and runs a few AdamW steps on fixed random clips and tube
masks, on the CPU with one thread. Prints one JSON line per objective: the loss of every step
(`repr` of the float, all digits) and a SHA-256 of the final weights. Two runs of the same code
print the same lines; a change that alters any number alters a line.

    OMP_NUM_THREADS=1 python bench/loss_trace.py > trace.jsonl
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
from typing import Dict, List, Optional

import timm
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine_for_pretraining import Objective, compute_loss  # noqa: E402
from masking_generator import tube_mask  # noqa: E402
from modeling_pretrain import TEACHER_ARCHS, VALID_OBJECTIVES, pretrain_videomae_tiny_patch16_224  # noqa: E402

try:  # the teacher loader lives in weights.py since the models stopped importing loaders
    from weights import build_teacher  # noqa: E402
except ImportError:
    from modeling_pretrain import build_teacher  # noqa: E402

FRAMES, SIZE, TUBELET, PATCH = 4, 112, 2, 16  # 112 = 7 x 16 = 8 x 14: DINOv2's grid is resized
GRID = (FRAMES // TUBELET, SIZE // PATCH, SIZE // PATCH)
TEACHER = "dino_s"  # a random ViT-S (4 tokens of 112x112 frames cost little)


def weights_hash(model: nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (names, shapes, dtypes and bytes), in key order."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        value = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def random_teacher(target_type: str, folder: str, seed: int) -> nn.Module:
    """A random teacher of the published architecture, saved and read back by `build_teacher`."""
    torch.manual_seed(seed)
    arch = TEACHER_ARCHS[(target_type, TEACHER)]
    vit = timm.create_model(arch, pretrained=False, num_classes=0, img_size=SIZE)
    path = os.path.join(folder, f"{target_type}.pth")
    torch.save(vit.state_dict(), path)
    return build_teacher(target_type, TEACHER, SIZE, path, patch_size=PATCH)


def trace(target_type: str, loss_func: str, steps: int, seed: int, folder: str,
          soft_codes: bool = False) -> Dict[str, object]:
    """Losses of `steps` AdamW steps and the final weights' hash of one objective."""
    teacher = random_teacher(target_type, folder, seed + 1) if target_type.startswith("dino") else None
    teacher_dim = None if teacher is None else teacher.vit.num_features
    torch.manual_seed(seed)
    model = pretrain_videomae_tiny_patch16_224(img_size=SIZE, all_frames=FRAMES, tubelet_size=TUBELET,
                                               target_type=target_type, loss_func=loss_func, num_prototypes=64,
                                               teacher_dim=teacher_dim).train()
    objective = Objective.of(model, soft_codes=soft_codes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    data = torch.Generator().manual_seed(seed + 2)
    losses: List[float] = []
    for _ in range(steps):
        videos = torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=data)
        mask = tube_mask(2, GRID, 0.75, generator=data)
        loss, _ = compute_loss(model, objective, videos, mask, teacher=teacher)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {"target_type": target_type, "loss_func": loss_func, "soft_codes": soft_codes, "steps": steps, "seed": seed,
            "losses": [repr(x) for x in losses], "weights_sha256": weights_hash(model),
            "teacher_sha256": None if teacher is None else weights_hash(teacher)}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # reductions split over threads would add in another order
    order = ["pixel", "mlp", "dino_v1", "dino_v2"]  # VALID_OBJECTIVES is a set: a fixed order to print
    with tempfile.TemporaryDirectory() as folder:
        for target_type, loss_func in sorted(VALID_OBJECTIVES, key=lambda o: (order.index(o[0]), o[1])):
            print(json.dumps(trace(target_type, loss_func, args.steps, args.seed, folder)), flush=True)
        # The soft-code (SwAV) cross-entropy takes another path than the hard codes' in-buffer one.
        print(json.dumps(trace("mlp", "SWAV", args.steps, args.seed, folder, soft_codes=True)), flush=True)


if __name__ == "__main__":
    main()
