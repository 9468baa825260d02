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
import logging
import time
from typing import Optional

import torch

from checkpointing import load_checkpoint, resume_from, state_dict_from
from datasets.mixup import Mixup
from datasets.splits import DATA_SETS
from datasets.video_dataset import BadSampleTracker
from engine_for_finetuning import evaluate, train_one_epoch, write_test_results
from evals.attentive import AttentiveProbe, retired_heads
from evals.common import add_image_flags
from evals.tasks import TASK_OF_DATA_SET, Task, best_head, evaluate_task, validate, write_task_results
from finetune_build import (build_datasets, build_model, build_optimizer, deepspeed_config_of, eval_loader,
                            probe_of, training_flip)
from flags import (ArgumentParser, add_augment_flags, add_clip_flags, add_encoder_flags, add_labelled_data_flags,
                   add_loader_flags, add_optim_flags, add_output_and_run_flags, add_probe_flags, check_flags,
                   check_nb_classes, clip_rules, common_rules, nb_classes_of, resolve_precision, str2bool)
from modeling_finetune import MODELS, LinearProbe, ModelEma
from run_log import RunLog, write_config
from runtime import Checkpointer, end_run, start_run, training_loader, wrap_for_training
from schedules import lr_rule, make_schedule
from shutdown import run_driver
from training_loop import EpochTotals

logger = logging.getLogger("sigma")


def get_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser("run_class_finetuning.py", "fine-tuning, probing and multi-view testing")
    g = p.add_argument_group("model")
    add_encoder_flags(g, MODELS, default="vit_base_patch16_224",
                      finetune_help="pretrained or fine-tuned checkpoint (ours, SIGMA, VideoMAE, a transformers "
                                    "folder) (default: none, a randomly initialised model)")
    g.add_argument("--init_scale", type=float, default=0.001, help="scale of the new head's initial weights")
    g.add_argument("--drop_path", type=float, default=0.1, help="stochastic depth rate")
    g.add_argument("--fc_drop_rate", type=float, default=0.0, help="dropout before the classifier")
    g.add_argument("--drop", type=float, default=0.0, help="dropout in the blocks")
    g.add_argument("--attn_drop_rate", type=float, default=0.0, help="dropout of the attention weights")
    g.add_argument("--use_checkpoint", action="store_true", help="gradient checkpointing")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training model; checkpoints keep the plain key names")
    g.add_argument("--use_mean_pooling", dest="use_mean_pooling", action="store_true", default=True,
                   help="mean of the tokens, then fc_norm")
    g.add_argument("--token_norm", "--use_cls", dest="use_mean_pooling", action="store_false",
                   help="the final norm on every token, then their mean, instead of --use_mean_pooling (the "
                        "model has no CLS token; --use_cls is the official spelling)")
    g.add_argument("--model_ema", action="store_true", help="keep, evaluate and save an EMA of the weights")
    g.add_argument("--model_ema_decay", type=float, default=0.9999, help="decay of --model_ema per step")
    add_probe_flags(p)
    g = p.add_argument_group("data")
    add_labelled_data_flags(g, DATA_SETS, default="Kinetics-400", data_path_help=(
        "folder with train.csv, val.csv, test.csv (FineGym sets: annotations/ and subactions/; Charades: "
        "Charades_v1_{train,test}.csv; UCFRep: annotations/{train,val}/; ImageNet: train/ and val/ class folders; "
        "CIFAR-100: cifar-100-python/)"))
    add_image_flags(g)
    add_clip_flags(g)
    g.add_argument("--num_sample", type=int, default=2, help="augmented clips per decoded training video")
    g.add_argument("--examples", type=int, default=0,
                   help="train on a class-balanced subset of about N videos, the official one (0: all)")
    g.add_argument("--test_num_segment", type=int, default=5, help="multi-view test: clips along each video")
    g.add_argument("--test_num_crop", type=int, default=3, help="multi-view test: spatial crops of each clip")
    add_loader_flags(g, num_workers=10)
    add_augment_flags(p)
    g = add_optim_flags(p, epochs=30, lr=1e-3, min_lr=1e-6, warmup_epochs=5, betas=(0.9, 0.999), batch_size=64,
                        batch_help="videos per GPU per micro-batch (each gives --num_sample clips)")
    g.add_argument("--layer_decay", type=float, default=0.75,
                   help="lr of block i = lr x layer_decay^(depth - i) (1: the same lr everywhere)")
    g.add_argument("--enable_deepspeed", action="store_true", help="train with DeepSpeed (INSTALL.md)")
    g.add_argument("--zero_stage", type=int, default=0, choices=[0, 1, 2], help="DeepSpeed ZeRO stage")
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
        "probe_lr_scales": (lambda v: min(v) > 0, "one or more scales > 0"),
        "probe_weight_decays": (lambda v: min(v) >= 0, "one or more values >= 0"),
        "probe_depth": (lambda v: v >= 1, ">= 1"),
        "probe_num_heads": (lambda v: v >= 1, ">= 1"),
        **common_rules(args), **clip_rules(args)})
    check_nb_classes(p, args, DATA_SETS)
    if args.probe == "attentive" and args.linear_probing:
        p.error("--linear_probing is --probe linear: give one probe")
    if args.compile and args.enable_deepspeed:
        p.error("--compile is not supported together with --enable_deepspeed")
    if args.eval and not (args.finetune or args.resume):
        p.error("--eval needs the weights to test: --finetune or --resume")
    return args


def main(args: argparse.Namespace) -> None:
    env = start_run(args.device, args.output_dir, lock=True)
    precision = resolve_precision(args.precision, env.device)
    torch.manual_seed(args.seed + env.rank)
    nb_classes = nb_classes_of(args, DATA_SETS)
    _, sampling, default_flip = DATA_SETS[args.data_set]
    flip = training_flip(args.data_set, args.data_path, args.flip, default_flip, log=env.is_main and not args.eval)
    probe = probe_of(args)
    augment = not probe or args.lp_augment
    if not augment:
        logger.info("%s probing: no RandAugment, random erasing, mixup, cutmix or label smoothing "
                    "(--lp_augment keeps them)", probe)
    kind = TASK_OF_DATA_SET.get(args.data_set, "classification")
    heads = len(args.probe_lr_scales) * len(args.probe_weight_decays) if probe == "attentive" else 1
    task = Task(kind, heads) if (kind, heads) != ("classification", 1) else None  # None: the plain classifier
    data = build_datasets(args, nb_classes, sampling, flip, augment)
    model, report = build_model(args, nb_classes)
    model.to(env.device)
    tracker = BadSampleTracker(args.max_bad_fraction)
    config = {**vars(args), "precision": precision, "world_size": env.world_size, "nb_classes": nb_classes,
              "task": kind, "flip": flip}
    if args.eval:
        test_only(args, env, model, report, data["test"], precision=precision, tracker=tracker, config=config,
                  task=task)
    else:
        train(args, env, model, data, nb_classes=nb_classes, precision=precision, augment=augment, tracker=tracker,
              config=config, task=task)
    end_run()


def test_only(args, env, model, report, test_set, *, precision: str, tracker, config: dict, task) -> None:
    """--eval: the multi-view test of --resume's or --finetune's weights."""
    write_config(args.output_dir, env, config)
    if args.resume:
        model.load_state_dict(state_dict_from(load_checkpoint(args.resume, required=()), args.resume))
    elif isinstance(model, (LinearProbe, AttentiveProbe)) or "head.weight" not in report["loaded"]:
        raise SystemExit(f"{args.finetune} has no classifier head for {config['nb_classes']} classes: "
                         f"--eval needs a fine-tuned checkpoint (or --resume)")
    final_test(args, env, [("", model, None)], test_set, precision=precision, tracker=tracker, task=task,
               dead=model.grid.dead_heads() if isinstance(model, AttentiveProbe) else ())
    if env.is_main:
        logger.info("done: wrote test_results.json, predictions.csv and config.json in %s", args.output_dir)


def train(args, env, core, data, *, nb_classes: int, precision: str, augment: bool, tracker, config: dict,
          task) -> None:
    train_set = data["train"]
    sampler, loader = training_loader(train_set, env, batch_size=args.batch_size, num_workers=args.num_workers,
                                      pin_mem=args.pin_mem, seed=args.seed)
    schedule = make_schedule(micro_batches=len(loader), accum=args.accum_iter, batch_size=args.batch_size,
                             world_size=env.world_size, num_videos=len(train_set), lr=args.lr, min_lr=args.min_lr,
                             warmup_lr=args.warmup_lr, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                             warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                             weight_decay_end=args.weight_decay_end)
    if env.is_main:
        logger.info("%s", lr_rule(lr=args.lr, batch_size=args.batch_size, accum=args.accum_iter,
                                  world_size=env.world_size))
    mixup = None
    if task is None and augment and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax):
        mixup = Mixup(nb_classes, args.mixup, args.cutmix, args.cutmix_minmax, args.mixup_prob,
                      args.mixup_switch_prob, args.mixup_mode, args.smoothing)
    optimizer = build_optimizer(args, core, schedule.lr)
    training = wrap_for_training(core, optimizer, env, precision=precision, accum_iter=args.accum_iter,
                                 clip_grad=args.clip_grad, compile=args.compile,
                                 deepspeed_config=deepspeed_config_of(args, env, precision))
    ema = ModelEma(core, args.model_ema_decay) if args.model_ema else None
    config = {**config, "clips_per_gpu": args.batch_size * args.num_sample, "global_batch": schedule.global_batch,
              "actual_lr": schedule.lr}
    key = task.primary if task else "acc1"  # chooses checkpoint-best.pth and each validation's best head
    totals, best = EpochTotals(), {key: None if task else -1.0, "epoch": -1}
    # The attentive probe reports the head best on the final epoch's validation, tested with the final
    # weights (V-JEPA 2's protocol): that validation's choice per net ("" and "_ema"), kept in checkpoints.
    last_val: dict = {}
    checkpointer = Checkpointer(
        env, args.output_dir, model=core, optimizer=optimizer, scaler=training.scaler, config=config,
        steps_per_epoch=schedule.steps_per_epoch, every_steps=args.save_ckpt_steps, every_epochs=args.save_ckpt_freq,
        epochs=args.epochs, keep_last=args.keep_last_ckpts, engine=training.engine,
        extra=lambda: {"best": best, "epoch_totals": totals.state(), "last_val": last_val,
                       **({"model_ema": ema.module.state_dict()} if ema else {})}, skip_nonfinite=args.skip_nonfinite)
    start_epoch, step, start_in_epoch = 0, 0, 0
    found = checkpointer.resume(args.resume, args.auto_resume)
    if found:
        path, state = found
        if ema is not None and state.get("model_ema"):
            ema.module.load_state_dict(state["model_ema"])
        best = state.get("best", best)
        last_val = state.get("last_val", last_val)
        start_epoch, step, start_in_epoch = resume_from(state, path, schedule.steps_per_epoch, env, config)
        totals = EpochTotals(state.get("epoch_totals") if start_in_epoch else None)
    write_config(args.output_dir, env, config)
    run_log = RunLog(env, args.output_dir, args.log_dir, schedule.total_steps, config, args.wandb, args.run_name,
                     resume_at=(start_epoch, step) if found else None, step_offset=checkpointer.log_step_offset)
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
                                    log_every=args.log_every, skip_nonfinite=args.skip_nonfinite, tracker=tracker,
                                    task=task, nonfinite=checkpointer.nonfinite):
            step = done.step
            if isinstance(core, AttentiveProbe):  # heads the step retired answer NaN from now on
                core.grid.retire(retired_heads(optimizer.param_groups))
            if ema is not None:
                ema.update(core)  # before any checkpoint of this step
            totals.add(done.stats)
            if done.log:
                run_log.step(done.log)
            if checkpointer.after_step(step):  # preempted: a resumable checkpoint of this step exists
                break
        if checkpointer.stopping:
            checkpointer.exit_for_requeue(step)
        checkpointer.check()  # before NaN weights are averaged, validated or saved as best
        dead = retired_heads(optimizer.param_groups)
        record = {**{f"train_{k}": v for k, v in totals.global_averages(env.device).items()}, **tracker.end_epoch(),
                  "epoch": epoch}
        if not args.disable_eval_during_finetuning:
            record.update(validate(nets, val, env, sharded=args.dist_eval, precision=precision, task=task,
                                   targets=data["val"].targets, dead=dead))
            last_val = {"epoch": epoch, **{name: record[f"val{name}_head"] for name, _, _ in nets
                                           if f"val{name}_head" in record}}
            if _improves(record, best, key, task):  # the same on every rank (gathered views)
                best = {key: record[f"val_{key}"], "epoch": epoch,
                        **({"head": record["val_head"]} if "val_head" in record else {})}
                checkpointer.save_best(epoch, step, {f"val_{key}": best[key]},
                                       ema=ema.module.state_dict() if ema else None)
            _log_validation(epoch, record, best, key)
        # Written ahead of the epoch's checkpoint: a kill in between re-runs the epoch on resume,
        # and the resumed run drops this line before writing it again.
        run_log.epoch({**record, "epoch_time": time.time() - t0})
        totals.reset()
        checkpointer.after_epoch(epoch, step)
    checkpointer.preemption.disarm()  # a signal during the test exits for requeue: the test is re-run
    results = final_test(args, env, nets, data["test"], precision=precision, tracker=tracker, task=task,
                         last_val=last_val, dead=retired_heads(optimizer.param_groups))
    if env.is_main:
        _summary(args.output_dir, best, results, run_log.tb_dir)
    run_log.close()
    if training.engine is not None:
        training.engine.destroy()  # DeepSpeed's own groups and buffers, before the process group goes


def _improves(record: dict, best: dict, key: str, task) -> bool:
    value = record[f"val_{key}"]
    return task.better(value, best[key]) if task else value > best[key]


def _log_validation(epoch: int, record: dict, best: dict, key: str) -> None:
    value = record[f"val_{key}"]
    if key == "acc1":
        logger.info("epoch %d: val top-1 %.2f top-5 %.2f (best %.2f at epoch %d)", epoch, value, record["val_acc5"],
                    best[key], best["epoch"])
    else:
        logger.info("epoch %d: val %s %.4g (best %.4g at epoch %d)", epoch, key, value, best[key], best["epoch"])


def final_test(args, env, nets, test_set, *, precision: str, tracker, task=None, last_val: Optional[dict] = None,
               dead=()) -> dict:
    """The multi-view test of every net (the model and its EMA): test_results*.json, predictions*.csv.
    With several heads the reported one is the best on the final epoch's validation (`last_val`:
    {"epoch": e, net name: head}), tested with these (final) weights as V-JEPA 2 does; without a
    validation the best on the test itself. `dead`: heads retired in training, never reported."""
    test = eval_loader(test_set, env, args, args.dist_eval)
    views = f"{args.test_num_segment}x{args.test_num_crop}"
    last_val = last_val or {}
    results = {}
    for name, net, dtype in nets:
        if task is None:
            metrics, videos = evaluate(net, test, env, sharded=args.dist_eval, precision=precision,
                                       input_dtype=dtype, tracker=tracker, desc=f"test{name} ({views} views)")
            if env.is_main:
                write_test_results(args.output_dir, name, metrics, videos, test_set.samples, views)
        else:
            per_head, videos = evaluate_task(net, test, env, task, test_set.targets, sharded=args.dist_eval,
                                             precision=precision, input_dtype=dtype, tracker=tracker,
                                             desc=f"test{name} ({views} views)", dead=dead)
            head = last_val.get(name)
            metrics = best_head(task, per_head, head)
            chosen_on = f"the validation of epoch {last_val['epoch']}" if head is not None else "the test itself"
            if env.is_main:
                write_task_results(args.output_dir, name, task, metrics, per_head, videos, test_set.samples,
                                   test_set.targets, views, chosen_on=chosen_on)
        results[name] = metrics
    return results


def _summary(output_dir: str, best: dict, results: dict, tb_dir: Optional[str]) -> None:
    """The closing line: what the run reached and what it wrote where."""
    def reached(m: dict) -> str:
        if "acc1" in m:
            return f"top-1 {m['acc1']:.2f} top-5 {m['acc5']:.2f}"
        return ", ".join(f"{k} {m[k]:.4g}" for k in ("mAP", "mae", "obo") if k in m)

    test = "; ".join(f"test{name} {reached(m)}" + (f" (head {m['head']})" if "head" in m else "")
                     for name, m in results.items())
    key = next(k for k in best if k not in ("epoch", "head"))
    fmt = ".2f" if key == "acc1" else ".4g"
    val = (f"best val {'top-1' if key == 'acc1' else key} {best[key]:{fmt}} at epoch {best['epoch']} "
           f"(checkpoint-best.pth); " if best["epoch"] >= 0 else "")
    logger.info("done: %s%s; checkpoints, log.txt, metrics.jsonl, test_results*.json and predictions*.csv in %s; "
                "tensorboard logs in %s", val, test, output_dir, tb_dir)


if __name__ == "__main__":
    run_driver(main, get_args())
