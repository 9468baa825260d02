"""What a fine-tuning run builds from its flags: the train / val / test datasets of any --data_set,
their loaders for evaluation, the model (classifier, linear or attentive probe) with --finetune's
weights, the optimizer and the DeepSpeed config. run_class_finetuning.py wires them."""
import json
import logging
import os
from typing import Optional

import torch

import deepspeed_support
from datasets.decoding import DecodeOptions
from datasets.images import ImageClipDataset
from datasets.sampler import ShardSampler
from datasets.splits import read_split
from datasets.subset import class_balanced_subset
from datasets.video_dataset import AugmentConfig, ClipConfig, VideoClipDataset, collate_clips
from evals.attentive import AttentiveProbe, AttentiveProbeGrid
from modeling_finetune import MODELS, LinearProbe
from optim_factory import create_optimizer, param_groups
from shutdown import WORKER_INIT
from weights import load_pretrained_weights, pooling_for_frozen_features, read_pretrained

logger = logging.getLogger("sigma")


# A data set may declare in <data_path>/dataset.json that a horizontal flip changes its labels
# (datasets.synthetic writes it for its direction labels): {"hflip_changes_label": true, "why": "..."}.
DATASET_INFO = "dataset.json"


def training_flip(data_set: str, data_path: str, flip: Optional[bool], default_flip: bool, *,
                  log: bool = True) -> bool:
    """Whether training clips are flipped horizontally: --flip / --no_flip (`flip`), else what
    <data_path>/dataset.json declares, else the data set's `default_flip`. A custom set that
    declares nothing and is flipped gets a warning naming --no_flip: a flip swaps the labels of
    left / right motion, and nothing else would tell."""
    if flip is not None:
        return flip
    path = os.path.join(data_path, DATASET_INFO)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                info = json.load(f)
            changes = info["hflip_changes_label"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{path}: cannot read 'hflip_changes_label' ({type(e).__name__}: {e})") from None
        if not isinstance(changes, bool):
            raise SystemExit(f"{path}: 'hflip_changes_label' must be true or false, got {changes!r}")
        if log:
            logger.info("%s: hflip_changes_label %s (%s): training flips %s (--flip / --no_flip override)", path,
                        str(changes).lower(), info.get("why", "no reason given"), "off" if changes else "on")
        return not changes
    if log and default_flip and data_set == "custom":
        logger.warning("training clips are flipped horizontally (the default of --data_set custom): if a label "
                       "names a direction (left / right, 'pushing something from left to right') pass --no_flip, "
                       "or declare it in %s: {\"hflip_changes_label\": true}", path)
    return default_flip


def build_datasets(args, nb_classes: int, sampling: str, default_flip: bool, augment: bool):
    """{split: dataset} of train / val / test (`.samples` lists the videos or images, `.targets`
    the multi-hot labels or counts of SEVERE's sets). Training flips follow --flip / --no_flip,
    else the data set's `default_flip`."""
    flip = default_flip if args.flip is None else args.flip
    clip = ClipConfig(num_frames=args.num_frames, sampling_rate=args.sampling_rate,
                      sampling="dense" if sampling == "repeat" else sampling, input_size=args.input_size,
                      short_side_size=args.short_side_size)
    aa = None if args.aa.lower() == "none" or not augment else args.aa
    aug = AugmentConfig(scale=tuple(args.finetuning_crops), flip=flip, auto_augment=aa, crop_first=args.crop_first,
                        reprob=args.reprob if augment else 0.0, remode=args.remode, recount=args.recount)
    datasets = {}
    for split in ("val", "test") if args.eval else ("train", "val", "test"):
        found = read_split(args.data_set, args.data_path, split, data_root=args.data_root, nb_classes=nb_classes,
                           max_missing_fraction=args.max_bad_fraction, class_list=args.class_list or None)
        if split == "train" and args.examples:
            found = found._replace(samples=class_balanced_subset(found.samples, args.examples))
            logger.info("--examples %d: training on %d videos", args.examples, len(found.samples))
        if found.images is not None:  # clips of a repeated image
            datasets[split] = ImageClipDataset(found.images, split, clip=clip, scale=tuple(args.finetuning_crops),
                                               flip=flip, test_num_crop=args.test_num_crop, seed=args.seed)
            datasets[split].samples, datasets[split].targets = found.samples, None
            continue
        datasets[split] = VideoClipDataset(
            found.samples, split, clip=clip, augment=aug, num_sample=args.num_sample if split == "train" else 1,
            test_num_segment=args.test_num_segment, test_num_crop=args.test_num_crop,
            video_backend=args.video_backend, seed=args.seed, targets=found.targets,
            decode=DecodeOptions(short_side=args.decode_short_side))
    if "train" in datasets and datasets["train"].targets is None:
        labels = len({s.label for s in datasets["train"].samples})
        if labels < nb_classes:
            logger.warning("--nb_classes %d but the train split of %s has %d distinct labels", nb_classes,
                           args.data_path, labels)
    return datasets


def eval_loader(dataset, env, args, sharded: bool):
    sampler = (ShardSampler(len(dataset), env.world_size, env.rank) if sharded
               else torch.utils.data.SequentialSampler(dataset))
    items = max(1, args.batch_size * args.num_sample // dataset.num_views)
    return torch.utils.data.DataLoader(dataset, batch_size=items, sampler=sampler, num_workers=args.num_workers,
                                       pin_memory=args.pin_mem and env.device.type == "cuda",
                                       collate_fn=collate_clips, worker_init_fn=WORKER_INIT)


def probe_of(args) -> Optional[str]:
    """"linear", "attentive" or None (full fine-tuning)."""
    return "linear" if args.linear_probing else args.probe


def build_model(args, nb_classes: int):
    """The classifier (or linear / attentive probe), with --finetune weights loaded."""
    probe = probe_of(args)
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
    if probe == "linear":
        model = LinearProbe(model, nb_classes, batch_norm=args.lp_head == "bn_linear",
                            train_norms=args.lp_train_norms, init_scale=args.init_scale)
    elif probe == "attentive":
        grid = [(lr, wd) for lr in args.probe_lr_scales for wd in args.probe_weight_decays]
        model = AttentiveProbe(model, AttentiveProbeGrid(nb_classes, model.embed_dim, grid,
                                                         num_heads=args.probe_num_heads, depth=args.probe_depth))
    return model, report


def build_optimizer(args, core, lr: float) -> torch.optim.Optimizer:
    """AdamW with layer decay (fine-tuning), or one group per attentive-probe head (its lr scale and
    constant weight decay)."""
    layer_decay = None if probe_of(args) or args.layer_decay >= 1.0 else args.layer_decay
    groups = (core.param_groups() if isinstance(core, AttentiveProbe)
              else param_groups(core, args.weight_decay, layer_decay=layer_decay))
    return create_optimizer(groups, lr=lr, betas=tuple(args.opt_betas), eps=args.opt_eps)


def deepspeed_config_of(args, env, precision: str) -> Optional[dict]:
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
