"""Fine-tuning, linear probing and multi-view testing of the video ViT; one code path for 1 process,
torchrun and Slurm.

    python run_class_finetuning.py --model vit_small_patch16_224 --data_set custom --nb_classes 4 \\
        --data_path data/demo --finetune output/demo/checkpoint-latest.pth --input_size 112 \\
        --num_frames 8 --epochs 2 --output_dir output/demo_ft

Flags keep the official VideoMAE / SIGMA names and meanings (see FINETUNE.md); `--batch_size` is
videos per GPU, each giving `--num_sample` augmented clips, and the lr is scaled by
batch_size * update_freq * world_size / 256 as in the official code. --data_path holds train.csv,
val.csv and test.csv (test falls back to val.csv). The run resumes by itself from the newest valid
checkpoint in --output_dir; on SIGTERM or SIGUSR1 it saves and exits with REQUEUE_EXIT_CODE.
"""
import argparse
import json
import logging
import os
import time
from typing import Optional

import torch

import deepspeed_support
from checkpointing import load_checkpoint, resume_from, state_dict_from
from datasets.annotations import read_annotations
from datasets.gym import GYM_SETS, read_gym
from datasets.mixup import Mixup
from datasets.sampler import ShardSampler
from datasets.subset import class_balanced_subset
from datasets.video_dataset import DATA_SETS, AugmentConfig, BadSampleTracker, ClipConfig, VideoClipDataset, collate_clips
from distributed import cleanup_distributed
from engine_for_finetuning import evaluate, train_one_epoch, write_test_results
from flags import (HelpFormatter, add_augment_flags, add_clip_flags, add_encoder_flags, add_labelled_data_flags, add_loader_flags,
                   add_optim_flags, add_output_and_run_flags, check_flags, check_nb_classes, clip_rules, common_rules,
                   nb_classes_of, resolve_precision, str2bool)
from modeling_finetune import (MODELS, LinearProbe, ModelEma, load_pretrained_weights, pooling_for_frozen_features,
                               read_pretrained)
from optim_factory import create_optimizer, param_groups
from run_log import RunLog, write_config
from runtime import Checkpointer, start_run, training_loader, wrap_for_training
from schedules import make_schedule
from shutdown import WORKER_INIT, run_driver
from training_loop import EpochTotals

logger = logging.getLogger("sigma")


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser("fine-tuning and evaluation", formatter_class=HelpFormatter)
    g = p.add_argument_group("model")
    add_encoder_flags(g, MODELS, default="vit_base_patch16_224",
                      finetune_help="pretrained or fine-tuned checkpoint (ours, SIGMA, VideoMAE)")
    g.add_argument("--init_scale", type=float, default=0.001, help="scale of the new head's initial weights")
    g.add_argument("--drop_path", type=float, default=0.1)
    g.add_argument("--fc_drop_rate", type=float, default=0.0)
    g.add_argument("--drop", type=float, default=0.0)
    g.add_argument("--attn_drop_rate", type=float, default=0.0)
    g.add_argument("--use_checkpoint", action="store_true", help="gradient checkpointing")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training model; checkpoints keep the plain key names")
    g.add_argument("--use_mean_pooling", dest="use_mean_pooling", action="store_true", default=True,
                   help="mean of the tokens, then fc_norm")
    g.add_argument("--token_norm", "--use_cls", dest="use_mean_pooling", action="store_false",
                   help="the final norm on every token, then their mean (the model has no CLS token; --use_cls "
                        "is the official spelling)")
    g.add_argument("--model_ema", action="store_true", help="keep, evaluate and save an EMA of the weights")
    g.add_argument("--model_ema_decay", type=float, default=0.9999)
    g = p.add_argument_group("linear probing")
    g.add_argument("--linear_probing", action="store_true",
                   help="frozen backbone in eval mode, train a linear head on pooled features")
    g.add_argument("--lp_head", default="bn_linear", choices=["bn_linear", "linear"],
                   help="BatchNorm without affine + Linear (MAE's probe), or Linear alone")
    g.add_argument("--lp_train_norms", action="store_true", help="also train the final norms (official variant)")
    g.add_argument("--lp_augment", action="store_true",
                   help="keep --aa/--reprob/--mixup/--cutmix/--smoothing (official variant; off by default)")
    g = p.add_argument_group("data")
    add_labelled_data_flags(g, DATA_SETS, default="Kinetics-400", data_path_help=(
        "folder with train.csv, val.csv, test.csv (FineGym sets: annotations/ and subactions/)"))
    add_clip_flags(g)
    g.add_argument("--num_sample", type=int, default=2, help="augmented clips per decoded training video")
    g.add_argument("--examples", type=int, default=0,
                   help="train on a class-balanced subset of about N videos, the official one (0: all)")
    g.add_argument("--test_num_segment", type=int, default=5)
    g.add_argument("--test_num_crop", type=int, default=3)
    add_loader_flags(g, num_workers=10)
    add_augment_flags(p)
    g = add_optim_flags(p, epochs=30, lr=1e-3, min_lr=1e-6, warmup_epochs=5, betas=(0.9, 0.999), batch_size=64,
                        batch_help="videos per GPU per micro-batch (each gives --num_sample clips)")
    g.add_argument("--layer_decay", type=float, default=0.75)
    g.add_argument("--enable_deepspeed", action="store_true")
    g.add_argument("--zero_stage", type=int, default=0, choices=[0, 1, 2])
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval", action="store_true", help="only run the multi-view test of the given weights")
    g.add_argument("--disable_eval_during_finetuning", action="store_true",
                   help="no validation after each epoch (no checkpoint-best.pth either)")
    g.add_argument("--dist_eval", type=str2bool, nargs="?", const=True, default=True,
                   help="shard validation/test over the processes (else every process evaluates everything)")
    add_output_and_run_flags(p, output_dir="output/finetune", save_ckpt_freq=5, run_name="finetune")
    args = p.parse_args(argv)
    check_flags(p, args, {
        "nb_classes": (lambda v: v >= 2, ">= 2"),
        "examples": (lambda v: v >= 0, ">= 0 (0: every training video)"),
        "num_sample": (lambda v: v >= 1, ">= 1"),
        "test_num_segment": (lambda v: v >= 1, ">= 1"),
        "test_num_crop": (lambda v: v >= 1, ">= 1"),
        "layer_decay": (lambda v: 0 < v <= 1, "in (0, 1] (1: no layer decay)"),
        "smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "reprob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "mixup": (lambda v: v >= 0, ">= 0"),
        "cutmix": (lambda v: v >= 0, ">= 0"),
        "finetuning_crops": (lambda v: 0 < v[0] <= v[1] <= 1, "MIN MAX with 0 < MIN <= MAX <= 1"),
        "model_ema_decay": (lambda v: 0 < v < 1, "in (0, 1)"),
        **common_rules(args), **clip_rules(args)})
    check_nb_classes(p, args, DATA_SETS)
    if args.compile and args.enable_deepspeed:
        p.error("--compile is not supported together with --enable_deepspeed")
    if args.eval and not (args.finetune or args.resume):
        p.error("--eval needs the weights to test: --finetune or --resume")
    return args


def build_datasets(args, nb_classes: int, sampling: str, default_flip: bool, augment: bool):
    """train / val / test datasets; test falls back to val.csv when there is no test.csv.
    Training flips follow --flip / --no_flip, else the data set's `default_flip`."""
    flip = default_flip if args.flip is None else args.flip
    root = args.data_root or args.data_path
    clip = ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate, sampling=sampling,
                      input_size=args.input_size, short_side_size=args.short_side_size)
    aa = None if args.aa.lower() == "none" or not augment else args.aa
    aug = AugmentConfig(scale=tuple(args.finetuning_crops), flip=flip, auto_augment=aa, crop_first=args.crop_first,
                        reprob=args.reprob if augment else 0.0, remode=args.remode, recount=args.recount)
    common = dict(clip=clip, augment=aug, video_backend=args.video_backend, seed=args.seed)
    out = {}
    for split in ("train", "val", "test"):
        if split == "train" and args.eval:
            continue
        csv_path = os.path.join(args.data_path, f"{split}.csv")
        if args.data_set in GYM_SETS:  # the official lists; val and test are both gym99_val.txt
            samples = read_gym(args.data_path, split, args.data_set)
        else:
            if split == "test" and not os.path.exists(csv_path):
                logger.info("no %s: testing on val.csv", csv_path)
                csv_path = os.path.join(args.data_path, "val.csv")
            samples = read_annotations(csv_path, root, nb_classes=nb_classes,
                                       max_missing_fraction=args.max_bad_fraction)
        if split == "train" and args.examples:
            samples = class_balanced_subset(samples, args.examples)
            logger.info("--examples %d: training on %d videos", args.examples, len(samples))
        out[split] = VideoClipDataset(samples, split, num_sample=args.num_sample if split == "train" else 1,
                                      test_num_segment=args.test_num_segment, test_num_crop=args.test_num_crop,
                                      **common)
    if "train" in out:
        found = len({s.label for s in out["train"].samples})
        if found < nb_classes:
            logger.warning("--nb_classes %d but %s/train.csv has %d distinct labels", nb_classes, args.data_path, found)
    return out


def eval_loader(dataset, env, args, sharded: bool):
    sampler = (ShardSampler(len(dataset), env.world_size, env.rank) if sharded
               else torch.utils.data.SequentialSampler(dataset))
    items = max(1, args.batch_size * args.num_sample // dataset.num_views)
    return torch.utils.data.DataLoader(dataset, batch_size=items, sampler=sampler, num_workers=args.num_workers,
                                       pin_memory=args.pin_mem and env.device.type == "cuda",
                                       collate_fn=collate_clips, worker_init_fn=WORKER_INIT)


def build_model(args, nb_classes: int):
    """The classifier (or linear probe), with --finetune weights loaded."""
    probe = args.linear_probing
    mean_pooling = args.use_mean_pooling
    weights = read_pretrained(args.finetune) if args.finetune else None  # read once, used twice
    if probe and weights:  # frozen features go through the checkpoint's own trained norm
        mean_pooling = pooling_for_frozen_features(weights, args.model_key)
    model = MODELS[args.model](
        img_size=args.input_size, all_frames=args.num_frames, num_classes=0 if probe else nb_classes,
        drop_path_rate=0.0 if probe else args.drop_path, drop_rate=0.0 if probe else args.drop,
        attn_drop_rate=0.0 if probe else args.attn_drop_rate, fc_drop_rate=0.0 if probe else args.fc_drop_rate,
        use_mean_pooling=mean_pooling, init_scale=args.init_scale, use_checkpoint=args.use_checkpoint)
    report = None
    if args.finetune:
        report = load_pretrained_weights(model, weights, args.model_key, args.model_prefix)
    if probe:
        model = LinearProbe(model, nb_classes, batch_norm=args.lp_head == "bn_linear",
                            train_norms=args.lp_train_norms, init_scale=args.init_scale)
    return model, report


def main(args: argparse.Namespace) -> None:
    env = start_run(args.device, args.output_dir)
    precision = resolve_precision(args.precision, env.device)
    torch.manual_seed(args.seed + env.rank)
    nb_classes = nb_classes_of(args, DATA_SETS)
    _, sampling, default_flip = DATA_SETS[args.data_set]
    augment = not args.linear_probing or args.lp_augment
    if not augment:
        logger.info("linear probing: no RandAugment, random erasing, mixup, cutmix or label smoothing "
                    "(--lp_augment keeps them)")
    data = build_datasets(args, nb_classes, sampling, default_flip, augment)
    model, report = build_model(args, nb_classes)
    model.to(env.device)
    tracker = BadSampleTracker(args.max_bad_fraction)
    config = {**vars(args), "precision": precision, "world_size": env.world_size, "nb_classes": nb_classes}
    if args.eval:
        test_only(args, env, model, report, data["test"], precision=precision, tracker=tracker, config=config)
    else:
        train(args, env, model, data, nb_classes=nb_classes, precision=precision, augment=augment, tracker=tracker,
              config=config)
    cleanup_distributed()


def test_only(args, env, model, report, test_set, *, precision: str, tracker, config: dict) -> None:
    """--eval: the multi-view test of --resume's or --finetune's weights."""
    write_config(args.output_dir, env, config)
    if args.resume:
        model.load_state_dict(state_dict_from(load_checkpoint(args.resume, required=()), args.resume))
    elif isinstance(model, LinearProbe) or "head.weight" not in report["loaded"]:
        raise SystemExit(f"{args.finetune} has no classifier head for {config['nb_classes']} classes: "
                         f"--eval needs a fine-tuned checkpoint (or --resume)")
    test = eval_loader(test_set, env, args, args.dist_eval)
    metrics, videos = evaluate(model, test, env, sharded=args.dist_eval, precision=precision, tracker=tracker)
    if env.is_main:
        write_test_results(args.output_dir, "", metrics, videos, test_set.samples,
                           f"{args.test_num_segment}x{args.test_num_crop}")
        logger.info("done: wrote test_results.json, predictions.csv and config.json in %s", args.output_dir)


def train(args, env, core, data, *, nb_classes: int, precision: str, augment: bool, tracker, config: dict) -> None:
    train_set = data["train"]
    sampler, loader = training_loader(train_set, env, batch_size=args.batch_size, num_workers=args.num_workers,
                                      pin_mem=args.pin_mem, seed=args.seed)
    schedule = make_schedule(micro_batches=len(loader), accum=args.accum_iter, batch_size=args.batch_size,
                             world_size=env.world_size, num_videos=len(train_set), lr=args.lr, min_lr=args.min_lr,
                             warmup_lr=args.warmup_lr, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                             warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                             weight_decay_end=args.weight_decay_end)
    mixup = None
    if augment and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax):
        mixup = Mixup(nb_classes, args.mixup, args.cutmix, args.cutmix_minmax, args.mixup_prob,
                      args.mixup_switch_prob, args.mixup_mode, args.smoothing)
    layer_decay = None if args.linear_probing or args.layer_decay >= 1.0 else args.layer_decay
    optimizer = create_optimizer(param_groups(core, args.weight_decay, layer_decay=layer_decay), lr=schedule.lr,
                                 betas=tuple(args.opt_betas), eps=args.opt_eps)
    training = wrap_for_training(core, optimizer, env, precision=precision, accum_iter=args.accum_iter,
                                 clip_grad=args.clip_grad, compile=args.compile,
                                 deepspeed_config=_deepspeed_config(args, env, precision))
    ema = ModelEma(core, args.model_ema_decay) if args.model_ema else None
    config = {**config, "clips_per_gpu": args.batch_size * args.num_sample, "global_batch": schedule.global_batch,
              "actual_lr": schedule.lr, "flip": data["val"].augment.flip}
    totals, best = EpochTotals(), {"acc1": -1.0, "epoch": -1}
    checkpointer = Checkpointer(
        env, args.output_dir, model=core, optimizer=optimizer, scaler=training.scaler, config=config,
        steps_per_epoch=schedule.steps_per_epoch, every_steps=args.save_ckpt_steps, every_epochs=args.save_ckpt_freq,
        epochs=args.epochs, keep_last=args.keep_last_ckpts, engine=training.engine,
        extra=lambda: {"best": best, "epoch_totals": totals.state(),
                       **({"model_ema": ema.module.state_dict()} if ema else {})})
    start_epoch, step, start_in_epoch = 0, 0, 0
    found = checkpointer.resume(args.resume, args.auto_resume)
    if found:
        path, state = found
        if ema is not None and state.get("model_ema"):
            ema.module.load_state_dict(state["model_ema"])
        best = state.get("best", best)
        start_epoch, step, start_in_epoch = resume_from(state, path, schedule.steps_per_epoch, env)
        if start_in_epoch:
            totals = EpochTotals(state.get("epoch_totals"))
    write_config(args.output_dir, env, config)
    run_log = RunLog(env, args.output_dir, args.log_dir, schedule.total_steps, config, args.wandb, args.run_name,
                     resume_at=(start_epoch, step) if found else None)
    tracker.epoch_size = len(train_set) // env.world_size
    val = eval_loader(data["val"], env, args, args.dist_eval)
    nets = [("", core, training.update.input_dtype)] + ([("_ema", ema.module, None)] if ema else [])
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, start=start_in_epoch * args.accum_iter * args.batch_size if epoch == start_epoch
                          else 0)
        tracker.start_epoch()
        for done in train_one_epoch(training.model, loader, training.update, schedule, device=env.device,
                                    epoch=epoch, start_step=step, num_classes=nb_classes, accum_iter=args.accum_iter,
                                    mixup=mixup, smoothing=args.smoothing if augment else 0.0,
                                    log_every=args.log_every, skip_nonfinite=args.skip_nonfinite, tracker=tracker):
            step = done.step
            if ema is not None:
                ema.update(core)  # before any checkpoint of this step
            totals.add(done.stats)
            if done.log:
                run_log.step(done.log)
            if checkpointer.after_step(step):  # preempted: a resumable checkpoint of this step exists
                break
        if checkpointer.stopping:
            checkpointer.exit_for_requeue(step)
        record = {**{f"train_{k}": v for k, v in totals.global_averages(env.device).items()}, **tracker.end_epoch(),
                  "epoch": epoch}
        if not args.disable_eval_during_finetuning:
            record.update(validate(nets, val, env, sharded=args.dist_eval, precision=precision))
            if record["val_acc1"] > best["acc1"]:  # the same on every rank (gathered views)
                best = {"acc1": record["val_acc1"], "epoch": epoch}
                checkpointer.save_best(epoch, step, {"val_acc1": record["val_acc1"]},
                                       ema=ema.module.state_dict() if ema else None)
            logger.info("epoch %d: val top-1 %.2f top-5 %.2f (best %.2f at epoch %d)", epoch, record["val_acc1"],
                        record["val_acc5"], best["acc1"], best["epoch"])
        # Written ahead of the epoch's checkpoint: a kill in between re-runs the epoch on resume,
        # and the resumed run drops this line before writing it again.
        run_log.epoch({**record, "epoch_time": time.time() - t0})
        totals.reset()
        checkpointer.after_epoch(epoch, step)
    checkpointer.preemption.disarm()  # a signal during the test exits for requeue: the test is re-run
    results = final_test(args, env, nets, data["test"], precision=precision, tracker=tracker)
    if env.is_main:
        _summary(args.output_dir, best, results, run_log.tb_dir)
    run_log.close()
    if training.engine is not None:
        training.engine.destroy()  # DeepSpeed's own groups and buffers, before the process group goes


def validate(nets, val, env, *, sharded: bool, precision: str) -> dict:
    """val_* (and val_ema_*) metrics of every net on the validation loader."""
    record = {}
    for name, net, dtype in nets:
        metrics, _ = evaluate(net, val, env, sharded=sharded, precision=precision, input_dtype=dtype)
        record.update({f"val{name}_{k}": v for k, v in metrics.items()})
    return record


def _deepspeed_config(args, env, precision: str) -> Optional[dict]:
    """--enable_deepspeed's config (also written to output_dir/deepspeed_config.json), else None."""
    if not args.enable_deepspeed:
        return None
    config = deepspeed_support.deepspeed_config(
        batch_size=args.batch_size * args.num_sample, update_freq=args.accum_iter, world_size=env.world_size,
        zero_stage=args.zero_stage, precision=precision, clip_grad=args.clip_grad)
    if env.is_main:
        with open(os.path.join(args.output_dir, "deepspeed_config.json"), "w") as f:
            json.dump(config, f, indent=2)
    return config


def final_test(args, env, nets, test_set, *, precision: str, tracker) -> dict:
    """The multi-view test of every net (the model and its EMA): test_results*.json, predictions*.csv."""
    test = eval_loader(test_set, env, args, args.dist_eval)
    results = {}
    for name, net, dtype in nets:
        metrics, videos = evaluate(net, test, env, sharded=args.dist_eval, precision=precision, input_dtype=dtype,
                                   tracker=tracker)
        results[name] = metrics
        if env.is_main:
            write_test_results(args.output_dir, name, metrics, videos, test_set.samples,
                               f"{args.test_num_segment}x{args.test_num_crop}")
    return results


def _summary(output_dir: str, best: dict, results: dict, tb_dir: Optional[str]) -> None:
    """The closing line: what the run reached and what it wrote where."""
    test = "; ".join(f"test{name} top-1 {m['acc1']:.2f} top-5 {m['acc5']:.2f}" for name, m in results.items())
    val = (f"best val top-1 {best['acc1']:.2f} at epoch {best['epoch']} (checkpoint-best.pth); "
           if best["epoch"] >= 0 else "")
    logger.info("done: %s%s; checkpoints, log.txt, metrics.jsonl, test_results*.json and predictions*.csv in %s; "
                "tensorboard logs in %s", val, test, output_dir, tb_dir)


if __name__ == "__main__":
    run_driver(main, get_args())
