"""Command-line flags the drivers share, and the checks of their ranges.

Each `add_*` function adds one group with the official names and meanings, so a flag is declared
once for every driver that takes it; `check_flags` stops at parse time (`parser.error`, naming
every bad flag) before anything is built. Derived values (precision, class count) are resolved by
the small functions at the bottom, never written back into `args`.
"""
import argparse
import copy
import difflib
import json
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from datasets.decoding import BACKENDS, DEFAULT_BACKEND, SCALING_BACKENDS
from datasets.mixup import MODES as MIXUP_MODES

PRECISIONS = ("fp32", "bf16", "fp16")


def str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y"):
        return True
    if v.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


# A help text that states its default itself ("default: the data set's"): no "(default: ...)" is appended.
STATED_DEFAULT = re.compile(r"\bdefault\b:", re.IGNORECASE)


def _is_off_form(action: argparse.Action) -> bool:
    """A store_false flag (--token_norm, the off form of --use_mean_pooling): "(default: True)" under it
    would read as the opposite of what it does."""
    return action.nargs == 0 and action.const is False and action.default is not False


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`-h` with every option's default once: appended as "(default: X)" unless the help states it
    itself, and left out for required flags and for the off form of a switch."""

    def _get_help_string(self, action):
        help = action.help or ""
        if (action.default is argparse.SUPPRESS or action.required or _is_off_form(action)
                or not action.option_strings or "%(default)" in help or STATED_DEFAULT.search(help)):
            return help
        return f"{help} (default: %(default)s)".strip()

    def _format_action(self, action):
        if not action.help and action.option_strings and action.default is not argparse.SUPPRESS:
            action = copy.copy(action)  # argparse prints no help line, so no default, for an empty help
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


class DocHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """-h with every default and the module docstring as written (tools whose description is the docstring)."""


class Switch(argparse.Action):
    """One boolean as `--x` / `--no_x` (argparse.BooleanOptionalAction would spell the off form --no-x)."""

    def __init__(self, option_strings, dest, default=None, help=None, **kwargs):
        names = list(option_strings) + [f"--no_{s[2:]}" for s in option_strings if s.startswith("--")]
        super().__init__(names, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no_"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


class ArgumentParser(argparse.ArgumentParser):
    """The drivers' parser: errors are one line and a pointer to -h (not the whole usage), and an
    unknown flag names the closest valid ones ("did you mean --batch_size?")."""

    def __init__(self, prog: Optional[str] = None, description: Optional[str] = None,
                 formatter_class=HelpFormatter, **kwargs):
        super().__init__(prog=prog, description=description, formatter_class=formatter_class, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, with the values of `--config RUN` (add_config_flag) as the defaults."""
        argv = sys.argv[1:] if args is None else list(args)
        config = next((a for a in self._actions if isinstance(a, RunConfig)), None)
        path = config.path_in(argv) if config else None
        if path is None:
            return super().parse_known_args(argv, namespace)
        values = read_run_config(self, path)
        # Every action of a key (--local-rank and --local_rank share one) takes its value as the default;
        # a required flag the file gives is no longer required. Restored after: the parser is unchanged.
        kept = [(a, a.default, a.required) for a in self._actions if a.dest in values]
        try:
            for action, _, _ in kept:
                action.default, action.required = values[action.dest], False
            return super().parse_known_args(argv, namespace)
        finally:
            for action, default, required in kept:
                action.default, action.required = default, required

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self._chosen_subparser(namespace) or self
            parser.error(parser.unrecognized(extras))
        return namespace

    def _chosen_subparser(self, namespace) -> Optional["ArgumentParser"]:
        """The subcommand's parser (its flags are the valid ones), or None."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(namespace, action.dest, None) or "")
                if isinstance(chosen, ArgumentParser):
                    return chosen._chosen_subparser(namespace) or chosen
        return None

    @staticmethod
    def closest(word: str, names: Sequence[str]) -> List[str]:
        """The valid names nearest to a misspelt one: the same up to - / _, else the best matches and
        those nearly as good (not every name above a cutoff)."""
        same = [n for n in names if n.replace("-", "_").strip("_") == word.replace("-", "_").strip("_")]
        if same:
            return same
        score = {n: difflib.SequenceMatcher(None, word, n).ratio() for n in names}
        best = max(score.values(), default=0.0)
        return sorted((n for n in names if score[n] >= max(0.6, best - 0.1)), key=score.get, reverse=True)[:3]

    def unrecognized(self, extras: List[str]) -> str:
        """'unrecognized argument --batchsize (did you mean --batch_size?)' for the extras of a parse."""
        names = sorted({s for a in self._actions if a.help is not argparse.SUPPRESS for s in a.option_strings})
        flags = [e.split("=", 1)[0] for e in extras if e.startswith("-") and len(e) > 1]
        if not flags:  # values without a flag: a positional too many, or a value of a one-value flag
            return f"unrecognized arguments: {' '.join(extras)}"
        parts = []
        for flag in flags:
            close = self.closest(flag, names)
            parts.append(flag + (f" (did you mean {' or '.join(close)}?)" if close else ""))
        return f"unrecognized argument{'s' if len(parts) > 1 else ''} {', '.join(parts)}"

    def error(self, message: str):
        # argparse's "argument --model: invalid choice: 'vit_bse' (choose from 'a', 'b', ...)": name the nearest.
        bad = re.match(r"(argument .*: invalid choice: '(.*)') \(choose from (.*)\)$", message)
        if bad:
            close = self.closest(bad.group(2), re.findall(r"'([^']*)'", bad.group(3)))
            if close:
                message = f"{bad.group(1)}: did you mean {' or '.join(close)}? (choose from {bad.group(3)})"
        command = self.prog if self.prog.startswith("python") else f"python {self.prog}"
        self.exit(2, f"{self.prog}: error: {message}\n{command} -h lists every flag and its default\n")


def add_launcher_compat_flags(group) -> None:
    """Flags injected by `python -m torch.distributed.launch` or kept in old launch lines: accepted
    and ignored, since the process layout always comes from the launcher's environment."""
    for flag in ("--local-rank", "--local_rank", "--world_size", "--dist_url"):
        group.add_argument(flag, default=None, help=argparse.SUPPRESS)


def add_switch(group, name: str, default: Optional[bool], help: str) -> None:
    """--name / --no_name for one boolean `name`."""
    group.add_argument(f"--{name}", dest=name, action=Switch, default=default, help=help)


def add_encoder_flags(group, models: Sequence[str], *, default: str, finetune_help: str) -> None:
    """The backbone and the checkpoint it starts from (ours, official SIGMA or VideoMAE)."""
    group.add_argument("--model", default=default, choices=sorted(models), help="the backbone (ViT size)")
    group.add_argument("--finetune", default="", help=finetune_help)
    group.add_argument("--model_key", default="model|module", help="'|'-separated keys holding the state dict")
    group.add_argument("--model_prefix", default="",
                       help="prefix stripped from the checkpoint's keys; keys without it are dropped (default: none)")


def add_labelled_data_flags(group, data_sets: Sequence[str], *, default: str, data_path_help: str,
                            several_paths: bool = False,
                            nb_classes_help: str = "class count (default: the data set's; required for custom)"
                            ) -> None:
    """A labelled data set: its name (class count, sampling, flips), annotation folder and video root."""
    group.add_argument("--data_set", default=default, choices=sorted(data_sets),
                       help="what the labels are: class count, frame sampling and flips (custom: your own CSVs)")
    group.add_argument("--data_path", required=True, nargs="+" if several_paths else None, help=data_path_help)
    group.add_argument("--data_root", default="", help="prefix of relative video paths (default: --data_path)")
    group.add_argument("--nb_classes", type=int, default=None, help=nb_classes_help)


def add_clip_flags(group, *, short_side: bool = True) -> None:
    """Clip geometry: frames, their stride, the crop and (evaluation) the short side before it."""
    group.add_argument("--num_frames", type=int, default=16, help="frames per clip")
    group.add_argument("--sampling_rate", type=int, default=4, help="stride between the clip's frames")
    group.add_argument("--input_size", type=int, default=224, help="side of the square crop given to the model")
    if short_side:
        group.add_argument("--short_side_size", type=int, default=224,
                           help="evaluation: short side of the frames before the crop(s)")


class _Unsupported(argparse.Action):
    """A flag this driver refuses with a clear error (parse time) instead of argparse's "unrecognized"."""

    def __init__(self, option_strings, dest, reason: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.reason = reason

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {self.reason}")


def add_loader_flags(group, *, num_workers: int, batch_size: Optional[int] = None, training: bool = True,
                     gpu_augment: bool = False) -> None:
    """Decoding and the DataLoader; `training` adds pinning and the bad-sample budget. --gpu_augment
    is accepted where `gpu_augment` (pretraining) and refused with its reason everywhere else."""
    group.add_argument("--video_backend", default=DEFAULT_BACKEND, choices=BACKENDS, help="video decoder")
    if batch_size is not None:
        group.add_argument("--batch_size", type=int, default=batch_size, help="clips per forward pass per process")
    group.add_argument("--num_workers", type=int, default=num_workers, help="DataLoader worker processes")
    group.add_argument("--decode_short_side", type=int, default=None,
                       help="scale frames in the decoder (pyav: with the RGB conversion; decord, torchcodec: "
                            "their swscale resize) to this short side where the source's is larger; cheaper on large "
                            "originals, but pixels differ from the official decode-then-resize path (DATASET.md). "
                            "Default: decode at the source size")
    if training:
        add_switch(group, "pin_mem", True, "page-locked host memory for batches (faster copies to a GPU)")
        group.add_argument("--max_bad_fraction", type=float, default=0.2,
                           help="share of unreadable videos per epoch tolerated (skipped and logged) before the "
                                "run stops")
    if gpu_augment:
        group.add_argument("--gpu_augment", action="store_true",
                           help="workers only decode and draw the crop boxes and masks; the crops, resizes and "
                                "normalisation run batched on --device, giving the same clips (PRETRAIN.md). "
                                "Pretraining only: fine-tuning's RandAugment stays in the workers")
    else:
        group.add_argument("--gpu_augment", action=_Unsupported,
                           reason="pretraining only (run_sigma_pretraining.py); fine-tuning's RandAugment, crops "
                                  "and random erasing, and evaluation's crops, run in the DataLoader workers")


def add_probe_flags(p: argparse.ArgumentParser) -> None:
    """Frozen-backbone probes of fine-tuning: the official linear probe and V-JEPA 2's attentive one."""
    g = p.add_argument_group("probes (frozen backbone)")
    g.add_argument("--linear_probing", action="store_true",
                   help="frozen backbone in eval mode, train a linear head on pooled features")
    g.add_argument("--lp_head", default="bn_linear", choices=["bn_linear", "linear"],
                   help="BatchNorm without affine + Linear (MAE's probe), or Linear alone")
    g.add_argument("--lp_train_norms", action="store_true", help="also train the final norms (official variant)")
    g.add_argument("--lp_augment", action="store_true",
                   help="keep --aa/--reprob/--mixup/--cutmix/--smoothing (official variant; off by default)")
    g.add_argument("--probe", default=None, choices=["linear", "attentive"],
                   help="frozen-backbone probe: linear (= --linear_probing) or attentive (V-JEPA 2's pooler, a grid "
                        "of heads over --probe_lr_scales x --probe_weight_decays trained on one backbone forward) "
                        "(default: none, full fine-tuning)")
    g.add_argument("--probe_lr_scales", type=float, nargs="+", default=[5.0, 3.0, 1.0, 0.3, 0.1],
                   help="attentive probe: each head's lr = scale x the scheduled lr")
    g.add_argument("--probe_weight_decays", type=float, nargs="+", default=[0.01, 0.1, 0.4, 0.8],
                   help="attentive probe: each head's constant weight decay")
    g.add_argument("--probe_depth", type=int, default=4, help="attentive probe: blocks per pooler (V-JEPA 2: 4)")
    g.add_argument("--probe_num_heads", type=int, default=16, help="attentive probe: attention heads per block")


def add_augment_flags(p: argparse.ArgumentParser) -> None:
    """The fine-tuning "augmentation" group: the official recipe's crop, flips, RandAugment, random
    erasing, label smoothing, mixup and cutmix."""
    g = p.add_argument_group("augmentation")
    g.add_argument("--finetuning_crops", type=float, nargs=2, default=(0.25, 1.0), metavar=("MIN", "MAX"),
                   help="area range of the random resized crop (official SIGMA: 0.25 1.0; VideoMAE: 0.08 1.0)")
    g.add_argument("--crop_first", action="store_true",
                   help="crop, then RandAugment the crop: cheaper, not the official order (see FINETUNE.md)")
    from datasets.splits import DATA_SETS  # the per-data-set rule, as the run applies it
    off = sorted(name for name, (_, _, flip) in DATA_SETS.items() if not flip)
    on = "on for every data set" if not off else f"off for {', '.join(off)}, on for the others"
    g.add_argument("--flip", action=Switch, default=None,
                   help=f"random horizontal flips in training; --no_flip for labels that name left/right "
                        f"(default: the data set's: {on})")
    g.add_argument("--aa", default="rand-m7-n4-mstd0.5-inc1", help="RandAugment policy; 'none' turns it off")
    g.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    g.add_argument("--remode", default="pixel", choices=["pixel", "rand", "const"],
                   help="what random erasing fills in: per-pixel noise, per-channel noise or zeros")
    g.add_argument("--recount", type=int, default=1, help="random erasing: boxes per clip")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0: off)")
    g.add_argument("--cutmix_minmax", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="cutmix box area range, overriding --cutmix's alpha (default: drawn from the alpha)")
    g.add_argument("--mixup_prob", type=float, default=1.0, help="probability of mixing a batch")
    g.add_argument("--mixup_switch_prob", type=float, default=0.5,
                   help="probability of cutmix instead of mixup when both are on")
    g.add_argument("--mixup_mode", default="batch", choices=MIXUP_MODES,
                   help="one mix per batch, per pair or per element")


def add_optim_flags(p: argparse.ArgumentParser, *, epochs: int, lr: float, min_lr: float, warmup_epochs: int,
                    betas: Tuple[float, float], batch_help: str, batch_size: int):
    """The "optimisation" group: batch and accumulation, the lr / weight-decay schedule, AdamW,
    clipping, precision. Returns the group, for a driver's own additions (e.g. --layer_decay)."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=batch_size, help=batch_help)
    # One thing with two official names: MAE's --accum_iter and VideoMAE's --update_freq.
    g.add_argument("--accum_iter", "--update_freq", dest="accum_iter", type=int, default=1,
                   help="micro-batches per optimiser step (--update_freq is the same flag)")
    g.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    g.add_argument("--lr", type=float, default=lr, help="base lr; actual = lr * global batch / 256")
    g.add_argument("--min_lr", type=float, default=min_lr, help="lr at the end of the cosine schedule")
    g.add_argument("--warmup_lr", type=float, default=1e-6, help="lr at the start of the linear warmup")
    g.add_argument("--warmup_epochs", type=int, default=warmup_epochs, help="epochs of linear warmup")
    g.add_argument("--warmup_steps", type=int, default=-1, help="overrides --warmup_epochs when > 0")
    g.add_argument("--weight_decay", type=float, default=0.05, help="AdamW weight decay (at the start)")
    g.add_argument("--weight_decay_end", type=float, default=None,
                   help="weight decay at the end, cosine from --weight_decay (default: constant --weight_decay)")
    g.add_argument("--opt", default="adamw", choices=["adamw"], help="the optimiser (official flag; AdamW only)")
    g.add_argument("--opt_betas", type=float, nargs=2, default=betas, metavar=("BETA1", "BETA2"), help="AdamW betas")
    g.add_argument("--opt_eps", type=float, default=1e-8, help="AdamW epsilon")
    g.add_argument("--clip_grad", type=float, default=None, help="max gradient norm (default: no clipping)")
    add_precision_flag(g)
    g.add_argument("--skip_nonfinite", type=int, default=0,
                   help="non-finite steps the whole run may skip before stopping (kept across resumes; reads "
                        "every step's loss on the host)")
    return g


def add_precision_flag(group) -> None:
    group.add_argument("--precision", default=None, choices=PRECISIONS,
                       help="compute precision (default: bf16 on CUDA, fp32 on CPU)")


def add_output_and_run_flags(p: argparse.ArgumentParser, *, output_dir: str, save_ckpt_freq: int,
                             run_name: str) -> None:
    """The "checkpoints and logging" and "run" flag groups every training driver shares."""
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--output_dir", default=output_dir, help="checkpoints, logs and results")
    g.add_argument("--log_dir", default=None, help="tensorboard dir (default: output_dir/tb)")
    g.add_argument("--save_ckpt_freq", type=int, default=save_ckpt_freq, help="keep checkpoint-{epoch}.pth every N epochs")
    g.add_argument("--save_ckpt_steps", type=int, default=1000, help="rolling resumable save every N steps")
    g.add_argument("--keep_last_ckpts", type=int, default=0, help="epoch checkpoints to keep (0: all)")
    g.add_argument("--resume", default="", help="checkpoint to resume from (default: newest valid in output_dir)")
    add_switch(g, "auto_resume", True, "resume from the newest valid checkpoint in --output_dir when there is one")
    g.add_argument("--log_every", type=int, default=20, help="log a training line every N steps")
    g.add_argument("--run_name", default=run_name,
                   help="name of the run (Weights & Biases; collect_results.py reads severe_* names)")
    g.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (offline unless WANDB_MODE)")
    add_run_flags(p)


def add_run_flags(p: argparse.ArgumentParser, *, output_dir: Optional[str] = None, precision: bool = False,
                  config: bool = True) -> None:
    """The "run" group: device, seed, --config (and, for evaluation drivers, output folder and precision).
    `config`: the driver writes output_dir/config.json, so --config can read one back."""
    g = p.add_argument_group("run")
    if config:
        add_config_flag(g)
    if output_dir is not None:
        g.add_argument("--output_dir", default=output_dir, help="results, config.json and the log")
    if precision:
        add_precision_flag(g)
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cuda:N or cpu (the default is cuda where there is one)")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    add_launcher_compat_flags(g)


# Keys the drivers write into config.json beside their flags (the run_log.write_config calls): values the
# run computed, which --config ignores. A key that is also a flag (precision, nb_classes, flip, split,
# num_frames) is read as that flag, with the value the run resolved, so a re-run resolves it the same way.
DERIVED_KEYS = ("world_size", "clips_per_gpu", "global_batch", "actual_lr", "task")


class RunConfig(argparse.Action):
    """-c / --config RUN: a saved run's config.json (or its folder) as the defaults; flags given beside
    it win. The file is read before the parse (ArgumentParser.parse_known_args), so this action only
    checks that the name it was given was the one read; it keeps nothing in the namespace, so the
    re-run's config.json is the original's."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, metavar="RUN", **kwargs)

    def path_in(self, argv: Sequence[str]) -> Optional[str]:
        """The value of the last -c / --config in `argv` (None: not given)."""
        scan = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        scan.add_argument(*self.option_strings, dest="config", default=None)
        return scan.parse_known_args(list(argv))[0].config

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string not in self.option_strings:  # an abbreviation the scan above did not read
            parser.error(f"{option_string}: write {' or '.join(self.option_strings)} in full")


def add_config_flag(group) -> None:
    group.add_argument("-c", "--config", action=RunConfig,
                       help="re-run a saved run: RUN/config.json (or the folder RUN) gives the defaults, flags "
                            "given beside it override them (e.g. --output_dir); keys the run computed ("
                            f"{', '.join(DERIVED_KEYS)}) are ignored, any other key that is not a flag here is "
                            "an error")


def _config_value(action: argparse.Action, value: Any) -> Any:
    """A config.json value for `action`, checked and converted as the flag's own value would be
    (ValueError with the reason when it cannot be)."""
    if value is None:
        if action.default is None or action.nargs == "?":
            return None
        raise ValueError(f"null, but the flag needs a value (default: {action.default!r})")
    if action.nargs == 0:  # --x, --no_x, store_true, store_false
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if many != isinstance(value, list):
        raise ValueError(f"{value!r}: expected {'a list' if many else 'one value'}")
    if isinstance(action.nargs, int) and len(value) != action.nargs or action.nargs == "+" and not value:
        raise ValueError(f"{value!r}: expected {action.nargs if isinstance(action.nargs, int) else 'one or more'} "
                         f"values")

    def one(v: Any) -> Any:
        kind = action.type or str
        wrong_kind = (kind is str) != isinstance(v, str) or isinstance(v, bool) and kind is not str2bool
        if isinstance(v, (list, dict)) or wrong_kind:
            raise ValueError(f"{v!r} is not {getattr(kind, '__name__', 'a value of this flag')}")
        try:
            v = kind(v if isinstance(v, str) else str(v))  # the flag's own conversion, as from the command line
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"{v!r}: {e}") from None
        if action.choices is not None and v not in action.choices:
            raise ValueError(f"{v!r} is not one of {', '.join(map(str, action.choices))}")
        return v

    return [one(v) for v in value] if many else one(value)


def read_run_config(parser: argparse.ArgumentParser, path: str) -> Dict[str, Any]:
    """{flag dest: value} of a run's config.json for `parser` (parser.error, naming the file and the
    key, on a key that is neither a flag nor in DERIVED_KEYS, or a value the flag would refuse)."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path) as f:
            saved = json.load(f)
    except OSError as e:
        parser.error(f"--config {path}: {e.strerror or e}")
    except json.JSONDecodeError as e:
        parser.error(f"--config {path}: not JSON (line {e.lineno}: {e.msg})")
    if not isinstance(saved, dict):
        parser.error(f"--config {path}: not a run's config.json (a JSON object of flags)")
    flags = {a.dest: a for a in parser._actions
             if a.option_strings and not isinstance(a, (RunConfig, _Unsupported, argparse._HelpAction))}
    unknown = [k for k in saved if k not in flags and k not in DERIVED_KEYS]
    if len(unknown) == 1:
        close = ArgumentParser.closest(unknown[0], list(flags))
        parser.error(f"--config {path}: key {unknown[0]!r} is not a flag of {parser.prog}"
                     + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    if unknown:
        shown = ", ".join(unknown[:6]) + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
        parser.error(f"--config {path}: keys {shown} are not flags of {parser.prog} (a config.json of another "
                     f"driver?)")
    values = {}
    for key, value in saved.items():
        if key in flags and key not in DERIVED_KEYS:  # --world_size: a launcher's, accepted and ignored
            try:
                values[key] = _config_value(flags[key], value)
            except ValueError as e:
                parser.error(f"--config {path}: key {key!r}: {e}")
    return values


Rules = Dict[str, Tuple[Callable[[Any], bool], str]]  # flag -> (valid?, the valid range in words)


def check_flags(p: argparse.ArgumentParser, args: argparse.Namespace, rules: Rules) -> None:
    """parser.error naming every flag outside its valid range, before anything is built."""
    bad = [f"--{name} {getattr(args, name)}: must be {valid}" for name, (ok, valid) in rules.items()
           if getattr(args, name, None) is not None and not ok(getattr(args, name))]
    if bad:
        p.error("; ".join(bad))


def common_rules(args: argparse.Namespace) -> Rules:
    """Ranges of the flags the training drivers share (add_optim_flags, add_output_and_run_flags)."""
    return {
        "batch_size": (lambda v: v >= 1, ">= 1"),
        "accum_iter": (lambda v: v >= 1, ">= 1 (--accum_iter / --update_freq)"),
        "epochs": (lambda v: v >= 1, ">= 1"),
        "lr": (lambda v: v > 0, "> 0"),
        "min_lr": (lambda v: v >= 0, ">= 0"),
        "warmup_epochs": (lambda v: args.warmup_steps > 0 or 0 <= v <= args.epochs,
                          f"in [0, --epochs {args.epochs}] (warmup cannot be longer than training)"),
        "weight_decay": (lambda v: v >= 0, ">= 0"),
        "clip_grad": (lambda v: v > 0, "> 0 (leave it out for no clipping)"),
        "num_workers": (lambda v: v >= 0, ">= 0"),
        "max_bad_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "skip_nonfinite": (lambda v: v >= 0, ">= 0"),
        "save_ckpt_freq": (lambda v: v >= 1, ">= 1"),
        "save_ckpt_steps": (lambda v: v >= 0, ">= 0 (0: no rolling saves)"),
        "keep_last_ckpts": (lambda v: v >= 0, ">= 0 (0: keep all)"),
        "log_every": (lambda v: v >= 1, ">= 1"),
    }


def clip_rules(args: argparse.Namespace, tubelet_size: int = 2, patch_size: int = 16) -> Rules:
    """Ranges of the clip geometry flags (frames in tubes of `tubelet_size`, patches of `patch_size`)."""
    rules = {
        "num_frames": (lambda v: v >= tubelet_size and v % tubelet_size == 0,
                       f"a positive multiple of the tube length {tubelet_size}"),
        "sampling_rate": (lambda v: v >= 1, ">= 1"),
        "input_size": (lambda v: v >= patch_size and v % patch_size == 0,
                       f"a positive multiple of the patch size {patch_size}"),
    }
    if getattr(args, "short_side_size", None) is not None:
        rules["short_side_size"] = (lambda v: v >= args.input_size, f">= --input_size {args.input_size}")
    if hasattr(args, "video_backend"):
        # Checked here, not when the first worker opens a video (datasets/decoding.py open_video).
        rules["decode_short_side"] = (lambda v: v >= 1 and args.video_backend in SCALING_BACKENDS,
                                      f">= 1, with --video_backend one of {', '.join(SCALING_BACKENDS)} (the "
                                      f"backends that scale in the decoder)")
    return rules


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    """--precision, else bf16 on CUDA and fp32 elsewhere."""
    return precision or ("bf16" if device.type == "cuda" else "fp32")


def check_nb_classes(p: argparse.ArgumentParser, args: argparse.Namespace, data_sets: Dict[str, tuple]) -> None:
    """parser.error when neither --nb_classes nor the --data_set gives a class count."""
    if args.nb_classes is None and data_sets[args.data_set][0] is None:
        p.error(f"--data_set {args.data_set} needs --nb_classes")


def nb_classes_of(args: argparse.Namespace, data_sets: Dict[str, tuple]) -> int:
    """--nb_classes, else the --data_set's class count (checked at parse time by resolve_nb_classes)."""
    return args.nb_classes or data_sets[args.data_set][0]
