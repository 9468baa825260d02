"""Rank 0's record of a run: config.json, metrics.jsonl (every log step), log.txt (one JSON line per
epoch), tensorboard, and Weights & Biases behind a flag; a resumed run first drops the records of
the steps it is about to repeat, a fresh run moves the records of an earlier attempt aside."""
import json
import logging
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

from distributed import DistEnv

logger = logging.getLogger("sigma")


def write_config(output_dir: str, env: DistEnv, config: Dict[str, Any]) -> None:
    """The resolved run configuration as output_dir/config.json (rank 0)."""
    if env.is_main:
        with open(os.path.join(output_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)


def _drop_records(path: str, drop: Callable[[Dict[str, Any]], bool]) -> None:
    """Rewrite a JSON-lines file without the records `drop` selects (and without a torn last line
    of a killed run), atomically."""
    if not os.path.exists(path):
        return
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if drop(record):
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if not dropped:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    logger.info("%s: dropped %d records of steps this resumed run repeats", os.path.basename(path), dropped)


def _move_aside(output_dir: str, names=("metrics.jsonl", "log.txt")) -> None:
    """A fresh start in a folder that holds an earlier attempt's records (killed before its first
    checkpoint, or started with --no_auto_resume): they go to NAME.attempt-N (tb/: tb.attempt-N),
    not mixed into ours."""
    for name in names:
        path = os.path.join(output_dir, name)
        if not os.path.exists(path) or (os.path.isfile(path) and os.path.getsize(path) == 0):
            continue
        stem, ext = os.path.splitext(name)
        n = 1
        while os.path.exists(os.path.join(output_dir, f"{stem}.attempt-{n}{ext}")):
            n += 1
        aside = os.path.join(output_dir, f"{stem}.attempt-{n}{ext}")
        os.replace(path, aside)
        logger.warning("fresh start: the earlier attempt's %s (no checkpoint to resume it from) was moved to %s",
                       name, aside)


def format_duration(seconds: float) -> str:
    """'2d 03:04:05' (days only when there are any): multi-day runs must not wrap at 24 h."""
    days, rest = divmod(int(seconds), 86400)
    clock = time.strftime("%H:%M:%S", time.gmtime(rest))
    return f"{days}d {clock}" if days else clock


class RunLog:
    """Rank 0's metric sinks: metrics.jsonl (every log step), log.txt (one JSON line per epoch),
    tensorboard, and Weights & Biases behind a flag. Other ranks get a RunLog that does nothing."""

    def __init__(self, env: DistEnv, output_dir: str, log_dir: Optional[str], total_steps: int,
                 config: Dict[str, Any], use_wandb: bool = False, run_name: str = "sigma",
                 resume_at: Optional[Tuple[int, int]] = None, step_offset: int = 0):
        """resume_at: (epoch, training step) this run resumes from: records of later steps and of
        that epoch and later ones, which the run is about to write again, are dropped first; None:
        a fresh run (an earlier attempt's records are moved aside).
        step_offset: added to every record's step (Checkpointer.log_step_offset), so that a resume
        in another step arithmetic numbers its steps after the earlier ones."""
        self.enabled, self.output_dir, self.total_steps = env.is_main, output_dir, total_steps
        self.step_offset = step_offset
        self.metrics_file = self.writer = self.wandb = None
        if not self.enabled:
            return
        if resume_at is not None:
            epoch, step = resume_at
            _drop_records(os.path.join(output_dir, "metrics.jsonl"), lambda r: r.get("step", 0) > step + step_offset)
            _drop_records(os.path.join(output_dir, "log.txt"), lambda r: r.get("epoch", -1) >= epoch)
        else:
            _move_aside(output_dir, ("metrics.jsonl", "log.txt") + (() if log_dir else ("tb",)))
        self.metrics_file = open(os.path.join(output_dir, "metrics.jsonl"), "a")
        from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is heavy to import

        self.writer = SummaryWriter(log_dir or os.path.join(output_dir, "tb"))
        if use_wandb:
            try:
                import wandb  # lazy and optional: not in requirements.txt
            except ImportError:
                raise SystemExit("--wandb needs the wandb package: pip install wandb") from None
            self.wandb = wandb.init(project="sigma", name=run_name, dir=output_dir, config=config,
                                    mode=os.environ.get("WANDB_MODE", "offline"), resume="allow", id=run_name)

    def step(self, record: Dict[str, float]) -> None:
        """A training-step record (keys step, epoch, loss, lr, data_time, step_time, ...)."""
        if not self.enabled:
            return
        eta = (self.total_steps - record["step"]) * record["step_time"]
        record = {**record, "step": record["step"] + self.step_offset}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.wandb:
            self.wandb.log(record, step=record["step"])
        for k, v in record.items():
            self.writer.add_scalar(f"train/{k}", v, record["step"])
        logger.info("epoch %d step %d/%d loss %.4f lr %.2e (peak group) data %.3fs step %.3fs eta %s", record["epoch"],
                    record["step"], self.total_steps, record["loss"], record["lr"], record["data_time"],
                    record["step_time"], format_duration(eta))

    def eval(self, record: Dict[str, float]) -> None:
        """A periodic evaluation record (keys step, epoch, knn_top1, ...): metrics.jsonl beside the
        step records, tensorboard eval/*, wandb."""
        if not self.enabled:
            return
        record = {**record, "step": record["step"] + self.step_offset}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        for k, v in record.items():
            if k not in ("step", "epoch"):
                self.writer.add_scalar(f"eval/{k}", v, record["step"])
        if self.wandb:
            self.wandb.log({f"eval/{k}": v for k, v in record.items()}, step=record["step"])

    def epoch(self, record: Dict[str, float]) -> None:
        """An end-of-epoch record, appended to log.txt."""
        if not self.enabled:
            return
        with open(os.path.join(self.output_dir, "log.txt"), "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(f"epoch/{k}", v, record["epoch"])
        if self.wandb:
            self.wandb.log({f"epoch/{k}": v for k, v in record.items()})

    @property
    def tb_dir(self) -> Optional[str]:
        return self.writer.log_dir if self.writer else None

    def close(self) -> None:
        if self.metrics_file:
            self.metrics_file.close()
            self.writer.close()
        if self.wandb:
            self.wandb.finish()
