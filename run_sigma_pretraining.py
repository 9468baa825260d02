"""SIGMA / VideoMAE pretraining: one code path for 1 process, torchrun and Slurm.

    python -m datasets.synthetic --out data/demo
    python run_sigma_pretraining.py --data_path data/demo --data_path_csv data/demo/pretrain.csv \\
        --model pretrain_videomae_small_patch16_224 --target_type mlp --loss_func SWAV \\
        --input_size 112 --num_frames 8 --epochs 3 --output_dir output/demo

Flags keep the official names and meanings (see PRETRAIN.md). The run resumes by itself from the
newest valid checkpoint in --output_dir; on SIGTERM or SIGUSR1 (Slurm preemption) it saves a
resumable checkpoint and exits with REQUEUE_EXIT_CODE.
"""
import argparse
import json
import logging
import os
import time

import torch

from checkpointing import resume_from
from datasets.annotations import read_annotations
from datasets.decoding import DecodeOptions
from datasets.gpu_augment import DeviceAugment
from datasets.video_dataset import AugmentConfig, BadSampleTracker, ClipConfig, MaskConfig, VideoClipDataset
from engine_for_pretraining import Objective, train_one_epoch
from evals.knn_monitor import KnnMonitor
from flags import check_flags, clip_rules, common_rules, resolve_precision
from modeling_pretrain import MODELS, TEACHER_DIMS
from optim_factory import create_optimizer, param_groups
from pretrain_flags import build_parser
from run_log import RunLog, write_config
from runtime import Checkpointer, end_run, start_run, training_loader, wrap_for_training
from schedules import lr_rule, make_schedule
from shutdown import run_driver
from training_loop import EpochTotals
from weights import build_teacher

logger = logging.getLogger("sigma")


def get_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    check_flags(p, args, {
        "mask_ratio": (lambda v: 0 < v < 1, "in (0, 1): some tubes visible, some masked"),
        "num_prototypes": (lambda v: v >= 2, ">= 2"),
        "sinkhorn_eps": (lambda v: v > 0, "> 0"),
        "sinkhorn_iterations": (lambda v: v >= 1, ">= 1"),
        "decoder_depth": (lambda v: v >= 1, ">= 1"),
        "num_sample": (lambda v: v >= 1, ">= 1"),
        "eval_every": (lambda v: v >= 0, ">= 0 (0: no periodic kNN)"),
        "eval_k": (lambda v: v >= 1, ">= 1"),
        "eval_nb_classes": (lambda v: v >= 2, ">= 2"),
        **common_rules(args), **clip_rules(args),
        "batch_size": (lambda v: v >= max(1, args.num_sample), f">= 1 and >= --num_sample {args.num_sample}")})
    if args.eval_every and not args.eval_data_path:
        p.error("--eval_every needs --eval_data_path (a folder with train.csv and val.csv)")
    return args


def build_monitor(args, env):
    """The periodic kNN of --eval_every, or None."""
    if not args.eval_every:
        return None
    clip = ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate, input_size=args.input_size,
                      short_side_size=args.input_size)
    return KnnMonitor(args.eval_data_path, data_root=args.eval_data_root, nb_classes=args.eval_nb_classes,
                      clip=clip, k=args.eval_k, temperature=args.eval_temperature, batch_size=args.batch_size,
                      num_workers=min(args.num_workers, 4), video_backend=args.video_backend, env=env)


def build(args, env):
    """Model, objective, teacher, dataset, sampler and loader of this run."""
    dino = args.target_type.startswith("dino")
    model = MODELS[args.model](
        img_size=args.input_size, all_frames=args.num_frames, decoder_depth=args.decoder_depth,
        target_type=args.target_type, loss_func=args.loss_func, num_prototypes=args.num_prototypes,
        teacher_dim=TEACHER_DIMS[args.distillation_teacher] if dino else None, drop_path_rate=args.drop_path,
        use_checkpoint=args.use_checkpoint).to(env.device)
    objective = Objective.of(model, sinkhorn_eps=args.sinkhorn_eps, sinkhorn_iterations=args.sinkhorn_iterations,
                             normalize_target=args.normalize_target)
    teacher = (build_teacher(args.target_type, args.distillation_teacher, args.input_size, args.teacher_ckpt)
               .to(env.device) if dino else None)
    samples = read_annotations(args.data_path_csv, args.data_path, with_labels=False,
                               max_missing_fraction=args.max_bad_fraction)
    dataset = VideoClipDataset(
        samples, "pretrain",
        ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate, input_size=args.input_size),
        AugmentConfig(pretrain_augmentation=args.augmentation),
        MaskConfig(mask_type=args.mask_type, mask_ratio=args.mask_ratio, grid=model.encoder.grid_size),
        num_sample=args.num_sample, video_backend=args.video_backend, seed=args.seed, gpu_augment=args.gpu_augment,
        decode=DecodeOptions(short_side=args.decode_short_side))
    # A batch of --batch_size clips holds batch_size // num_sample decoded videos.
    sampler, loader = training_loader(dataset, env, batch_size=max(1, args.batch_size // args.num_sample),
                                      num_workers=args.num_workers, pin_mem=args.pin_mem, seed=args.seed,
                                      generator=torch.Generator().manual_seed(args.seed))
    return model, objective, teacher, dataset, sampler, loader


def main(args: argparse.Namespace) -> None:
    env = start_run(args.device, args.output_dir, lock=True)
    precision = resolve_precision(args.precision, env.device)
    torch.manual_seed(args.seed + env.rank)
    core, objective, teacher, dataset, sampler, loader = build(args, env)
    monitor = build_monitor(args, env)  # its lists are read and probed at start, like the training list
    schedule = make_schedule(micro_batches=len(loader), accum=args.accum_iter, batch_size=args.batch_size,
                             world_size=env.world_size, num_videos=len(dataset), lr=args.lr, min_lr=args.min_lr,
                             warmup_lr=args.warmup_lr, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                             warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                             weight_decay_end=args.weight_decay_end)
    if env.is_main:
        logger.info("%s", lr_rule(lr=args.lr, batch_size=args.batch_size, accum=args.accum_iter,
                                  world_size=env.world_size))
    optimizer = create_optimizer(param_groups(core, args.weight_decay), lr=schedule.lr, betas=tuple(args.opt_betas),
                                 eps=args.opt_eps)
    training = wrap_for_training(core, optimizer, env, precision=precision, accum_iter=args.accum_iter,
                                 clip_grad=args.clip_grad, compile=args.compile)
    if args.compile and teacher is not None:
        teacher = torch.compile(teacher)
    config = {**vars(args), "precision": precision, "world_size": env.world_size,
              "clips_per_gpu": loader.batch_size * args.num_sample, "global_batch": schedule.global_batch,
              "actual_lr": schedule.lr}
    totals = EpochTotals()  # the running epoch's sums, saved with every checkpoint
    checkpointer = Checkpointer(env, args.output_dir, model=core, optimizer=optimizer, scaler=training.scaler,
                                config=config, steps_per_epoch=schedule.steps_per_epoch,
                                every_steps=args.save_ckpt_steps, every_epochs=args.save_ckpt_freq,
                                epochs=args.epochs, keep_last=args.keep_last_ckpts,
                                extra=lambda: {"epoch_totals": totals.state()}, skip_nonfinite=args.skip_nonfinite)
    start_epoch, step, start_in_epoch = 0, 0, 0
    found = checkpointer.resume(args.resume, args.auto_resume)
    if found:
        path, state = found
        start_epoch, step, start_in_epoch = resume_from(state, path, schedule.steps_per_epoch, env, config)
        if start_in_epoch:
            totals = EpochTotals(state.get("epoch_totals"))
    write_config(args.output_dir, env, config)
    run_log = RunLog(env, args.output_dir, args.log_dir, schedule.total_steps, config, args.wandb, args.run_name,
                     resume_at=(start_epoch, step) if found else None, step_offset=checkpointer.log_step_offset)
    tracker = BadSampleTracker(args.max_bad_fraction, epoch_size=len(dataset) // env.world_size)
    n_parameters = sum(p.numel() for p in core.parameters() if p.requires_grad)
    # --gpu_augment: the batches are cropped, resized and normalised on the device as they arrive.
    train_batches = DeviceAugment(loader, env.device, args.input_size) if args.gpu_augment else loader
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch, start=start_in_epoch * args.accum_iter * loader.batch_size
                          if epoch == start_epoch else 0)
        tracker.start_epoch()
        for done in train_one_epoch(training.model, train_batches, training.update, schedule, objective,
                                    device=env.device, epoch=epoch, start_step=step, accum_iter=args.accum_iter,
                                    teacher=teacher, log_every=args.log_every, skip_nonfinite=args.skip_nonfinite,
                                    tracker=tracker, nonfinite=checkpointer.nonfinite):
            step = done.step
            totals.add(done.stats)
            if done.log:
                run_log.step(done.log)
            if checkpointer.after_step(step):  # preempted: a resumable checkpoint of this step exists
                break
        if checkpointer.stopping:
            checkpointer.exit_for_requeue(step)
        bad = tracker.end_epoch()  # a collective: every rank stops if any rank's share is too bad
        checkpointer.check()  # no NaN epoch average is logged
        # Written ahead of the epoch's checkpoint: a kill in between re-runs the epoch on resume,
        # and the resumed run drops this line before writing it again.
        run_log.epoch({**{f"train_{k}": v for k, v in totals.global_averages(env.device).items()}, **bad,
                       "epoch": epoch, "n_parameters": n_parameters, "epoch_time": time.time() - t0})
        totals.reset()
        checkpointer.after_epoch(epoch, step)
        # After the checkpoint: the monitor never costs one (a failure is logged and skipped).
        if monitor and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            scores = monitor.score(core.encoder, precision)
            if scores:
                run_log.eval({"step": step, "epoch": epoch, **scores})
    checkpointer.preemption.disarm()
    if env.is_main:
        _summary(args.output_dir, run_log.tb_dir)
    run_log.close()
    end_run()


def _summary(output_dir: str, tb_dir: str) -> None:
    """One closing line: loss first -> last epoch, the collapse monitors of the last epoch (per-batch
    means, see PRETRAIN.md "Collapse monitors"), bad samples, where the outputs are."""
    epochs = [json.loads(line) for line in open(os.path.join(output_dir, "log.txt"))]
    first, last = epochs[0], epochs[-1]
    config_path = os.path.join(output_dir, "config.json")
    k = json.load(open(config_path)).get("num_prototypes") if os.path.isfile(config_path) else None
    of_k = f"/{k}" if k else ""

    def sides(name: str, fmt: str, suffix: str = "") -> str:
        return ", ".join(f"{fmt.format(last[f'train_{name}_{side}'])}{suffix} {side}" for side in ("pred", "target")
                         if f"train_{name}_{side}" in last)

    if "train_protos_used_pred" in last:
        protos = f"prototypes used (balanced Sinkhorn codes) {sides('protos_used', '{:.0f}', of_k)}"
        if "train_score_protos_used_pred" in last:
            ln_k = f" of ln {k} = {torch.tensor(float(k)).log():.2f}" if k else ""
            protos += (f"; raw-score argmax {sides('score_protos_used', '{:.0f}', of_k)}, "
                       f"usage entropy {sides('score_usage_entropy', '{:.2f}')}{ln_k} nats")
        protos += " (last epoch, per batch; what these mean: PRETRAIN.md, Collapse monitors)"
    else:
        protos = "no prototypes (pixel targets)"
    logger.info("done: train_loss %.4f (epoch %d) -> %.4f (epoch %d); %s; bad samples %d; checkpoints in %s; "
                "tensorboard logs in %s", first["train_loss"], first["epoch"], last["train_loss"], last["epoch"],
                protos, sum(e["bad_samples"] for e in epochs), output_dir, tb_dir)


if __name__ == "__main__":
    run_driver(main, get_args())
