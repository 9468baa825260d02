"""The flags of pretraining (run_sigma_pretraining.py), in a module of their own so that the other
tools that need its defaults (run_sigma_vis.py's model flags) read them without importing the driver.
"""
import argparse

from flags import ArgumentParser, add_clip_flags, add_loader_flags, add_optim_flags, add_output_and_run_flags, str2bool
from masking_generator import MASKS
from modeling_pretrain import LOSS_FUNCS, MODELS, TARGET_TYPES, TEACHER_DIMS


def build_parser() -> argparse.ArgumentParser:
    """The flags of run_sigma_pretraining.py and their defaults (run_sigma_vis.py takes its model defaults
    from here)."""
    p = ArgumentParser("run_sigma_pretraining.py", "SIGMA / VideoMAE pretraining")
    g = p.add_argument_group("model and objective")
    g.add_argument("--model", default="pretrain_videomae_small_patch16_224", choices=sorted(MODELS),
                   help="encoder size (with its decoder)")
    g.add_argument("--decoder_depth", type=int, default=4, help="decoder blocks")
    g.add_argument("--mask_type", default="tube", choices=sorted(MASKS),
                   help="tube: the same patches masked in every frame; random: per space-time patch")
    g.add_argument("--mask_ratio", type=float, default=0.9, help="share of the tubes masked")
    g.add_argument("--target_type", default="mlp", choices=TARGET_TYPES,
                   help="what the decoder predicts: pixels (VideoMAE), an MLP projection (SIGMA-MLP) or DINO "
                        "features (SIGMA-DINO)")
    g.add_argument("--loss_func", default="SWAV", choices=LOSS_FUNCS,
                   help="SWAV: Sinkhorn codes of prototype scores, swapped prediction (SIGMA); L2: regression")
    g.add_argument("--distillation_teacher", default="dino_s", choices=sorted(TEACHER_DIMS),
                   help="the DINO image model of dino_* targets")
    g.add_argument("--teacher_ckpt", default="",
                   help="local DINO v1 / DINOv2 weights for dino_* targets (default: none; dino_* targets need it)")
    g.add_argument("--num_prototypes", type=int, default=3000, help="K, the learnable prototypes of SWAV")
    g.add_argument("--sinkhorn_eps", type=float, default=0.05, help="entropy regularisation of Sinkhorn-Knopp")
    g.add_argument("--sinkhorn_iterations", type=int, default=10, help="Sinkhorn-Knopp iterations")
    g.add_argument("--normalize_target", "--normlize_target", type=str2bool, default=True,
                   help="per-tube / per-clip target normalisation (official spelling accepted)")
    g.add_argument("--drop_path", type=float, default=0.0, help="stochastic depth rate of the encoder")
    g.add_argument("--use_checkpoint", action="store_true", help="gradient checkpointing")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model (and DINO teacher); checkpoints keep the plain key names")
    g = p.add_argument_group("data")
    g.add_argument("--data_path", default="",
                   help="root for relative paths in --data_path_csv (default: the current folder)")
    g.add_argument("--data_path_csv", required=True, help="pretraining list of `path label` lines")
    add_clip_flags(g, short_side=False)
    g.add_argument("--augmentation", default="multi_scale_crop", choices=["multi_scale_crop", "resize"],
                   help="multi-scale random crop and flip (official), or a plain resize")
    g.add_argument("--num_sample", type=int, default=1, help="augmented views per decoded clip")
    add_loader_flags(g, num_workers=8, gpu_augment=True)
    add_optim_flags(p, epochs=800, lr=1.5e-4, min_lr=1e-5, warmup_epochs=40, betas=(0.9, 0.95), batch_size=32,
                    batch_help="clips per GPU per micro-batch (views count as clips)")
    g = p.add_argument_group("monitoring")
    g.add_argument("--eval_every", type=int, default=0,
                   help="every N epochs (and after the last), kNN top-1 of frozen encoder features on "
                        "--eval_data_path, logged beside the loss (0: never)")
    g.add_argument("--eval_data_path", default="",
                   help="folder with train.csv (kNN bank) and val.csv (queries) (default: none, needed by "
                        "--eval_every)")
    g.add_argument("--eval_data_root", default="", help="prefix of its relative video paths (default: the folder)")
    g.add_argument("--eval_nb_classes", type=int, default=None,
                   help="classes of the kNN (default: the largest label + 1)")
    g.add_argument("--eval_k", type=int, default=20, help="neighbours of the kNN")
    g.add_argument("--eval_temperature", type=float, default=0.07, help="temperature of the kNN votes")
    add_output_and_run_flags(p, output_dir="output/pretrain", save_ckpt_freq=50, run_name="sigma")
    return p
