"""Time one pretraining step (targets, forward, loss, backward, AdamW) on synthetic clips.

The step is the training loop's (training_loop.train_steps): schedules, `compute_loss` under
`TorchUpdate`'s autocast, its backward and step (GradScaler for fp16, grad norm, AdamW, zero_grad)
and the running stat sums. Data loading is excluded: clips and tube masks are synthetic and already
on the device. Prints one JSON line per config (batch size):

    median_step_s, clips_per_s   median over --iters steps after --warmup steps (CUDA: synchronised)
    peak_mem_mb                  CUDA: torch.cuda.max_memory_allocated over the timed steps;
                                 CPU: peak resident set (VmHWM, reset through /proc/self/clear_refs
                                 before the timed steps; ru_maxrss of the process where that fails)
    gflops_per_clip              forward + backward FLOPs of one step / batch, counted once with
                                 torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions
                                 and attention; teacher forward included; Sinkhorn's mat-vec
                                 products and elementwise work are not counted)
    tflops, mfu                  achieved FLOP rate, and its fraction of --peak_tflops or of the
                                 known dense peak of the device (PEAK_TFLOPS)
    breakdown                    with --breakdown: median seconds per stage (see STAGES);
                                 breakdown_total_s the median step total, breakdown_steps each
                                 step's unrounded stage seconds, breakdown_wall_s each of those
                                 steps timed whole (synchronised host clock)
    raw                          the unrounded figures the rounded ones come from: flops_per_step
                                 (exact count), median_step_s, tflops, mfu; compare these, not the
                                 rounded fields (at CPU sizes tflops is ~1e-3, so 4 decimals is one digit)

Fast paths to measure on and off: --precision, --sdpa_backend, --fused_adamw, --compile,
--sinkhorn (classic: the official matrix-rewriting iteration from bench_sinkhorn.py).

With --official_dir pointing at a checkout of the official SIGMA code, the official model and
loss run in the same process on the same clip, mask and weights (loaded strictly into ours; the
first losses of both are reported with their relative difference). The timed steps alternate,
official then ours, so that load from other jobs on a shared machine falls on both alike:
relative_to_first is the ratio of the two medians, ratio_paired the median of the per-round
ratios, and cpu_ratio the same from the process's CPU seconds (time.process_time, which a
time-shared core does not inflate). cpu_pressure_avg10 is /proc/pressure/cpu (some avg10, %)
before and after the timed steps.

    python bench/bench_pretrain_step.py --device cuda --precision bf16 --sweep 8 16 32
    python bench/bench_pretrain_step.py --device cpu --batch_size 2 --breakdown
    python bench/bench_pretrain_step.py --model pretrain_videomae_small_patch16_224 --target_type mlp \
        --batch_size 2 --official_dir /path/to/SIGMA
"""
import argparse
import contextlib
import importlib
import json
import logging
import os
import resource
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import engine_for_pretraining  # noqa: E402
from bench_sinkhorn import classic_sinkhorn, sync  # noqa: E402
from engine_for_pretraining import Objective, compute_loss  # noqa: E402
from masking_generator import tube_mask  # noqa: E402
from modeling_finetune import MaskIndex  # noqa: E402
from modeling_pretrain import MODELS, TEACHER_ARCHS, TEACHER_DIMS, TARGET_TYPES, DinoTeacher  # noqa: E402
from optim_factory import create_optimizer, param_groups  # noqa: E402
from sinkhorn import sinkhorn_knopp  # noqa: E402
from training_loop import TorchUpdate, set_schedules  # noqa: E402

logger = logging.getLogger("bench_pretrain_step")

# Dense (no 2:4 sparsity) peak TFLOPS from NVIDIA's datasheets, first matching name fragment wins.
# "tf32" applies to fp32 runs whose matmuls may use TF32 (torch.get_float32_matmul_precision() != "highest").
PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM5
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)

# Stages of --breakdown, in step order. The segment of the step that ends at each mark is charged
# to the mark's stage, so the stages add up to the whole step.
STAGES = ("targets", "teacher", "encoder", "decoder", "projection", "sinkhorn", "loss", "backward", "optimizer")
SDPA_BACKENDS = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
SINKHORNS = {"scaling": sinkhorn_knopp, "classic": classic_sinkhorn}

# FlopCounterMode has formulas for the CUDA attention kernels only; CPU's fused SDPA kernel gets
# the same count (two matmuls forward, five backward).
aten = torch.ops.aten
CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad_out, q, k, v),
}


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser("pretraining step benchmark")
    g = p.add_argument_group("model and objective")
    g.add_argument("--model", default="pretrain_videomae_small_patch16_224", choices=sorted(MODELS))
    g.add_argument("--target_type", default="mlp", choices=TARGET_TYPES)
    g.add_argument("--loss_func", default=None, choices=["L2", "SWAV"], help="default: L2 for pixel, else SWAV")
    g.add_argument("--distillation_teacher", default="dino_b", choices=sorted(TEACHER_DIMS),
                   help="dino_* targets: randomly initialised architecture of these published weights")
    g.add_argument("--decoder_depth", type=int, default=4)
    g.add_argument("--num_prototypes", type=int, default=3000)
    g.add_argument("--sinkhorn_eps", type=float, default=0.05)
    g.add_argument("--sinkhorn_iterations", type=int, default=10)
    g.add_argument("--mask_ratio", type=float, default=0.9)
    g = p.add_argument_group("inputs")
    g.add_argument("--batch_size", type=int, default=2, help="clips per step")
    g.add_argument("--sweep", type=int, nargs="+", default=None, help="time these batch sizes instead")
    g.add_argument("--num_frames", type=int, default=16)
    g.add_argument("--input_size", type=int, default=224)
    g = p.add_argument_group("fast paths")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    g.add_argument("--sdpa_backend", default="auto", choices=["auto", *SDPA_BACKENDS])
    g.add_argument("--fused_adamw", default="on", choices=["on", "off"],
                   help="torch's fused AdamW kernel (CUDA or CPU)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model (warm-up steps absorb the compilation)")
    g.add_argument("--sinkhorn", default="scaling", choices=sorted(SINKHORNS))
    g = p.add_argument_group("measurement")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    g.add_argument("--warmup", type=int, default=2)
    g.add_argument("--iters", type=int, default=5)
    g.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=False,
                   help="also time each stage of the step (eager model only)")
    g.add_argument("--peak_tflops", type=float, default=None, help="peak for MFU (default: PEAK_TFLOPS by device)")
    g.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--official_dir", default="", help="checkout of the official SIGMA code to time beside ours")
    g.add_argument("--official_precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast of the official step (its engine autocasts on CUDA only: fp32 on the CPU)")
    args = p.parse_args(argv)
    if args.breakdown and args.compile:
        p.error("--breakdown times the eager model's stages; run it without --compile")
    return args


def resolved_loss_func(args: argparse.Namespace) -> str:
    return args.loss_func or ("L2" if args.target_type == "pixel" else "SWAV")


def objective_of(args: argparse.Namespace, model) -> Objective:
    return Objective.of(model, sinkhorn_eps=args.sinkhorn_eps, sinkhorn_iterations=args.sinkhorn_iterations)


def random_teacher(target_type: str, teacher: str, img_size: int, patch_size: int = 16) -> DinoTeacher:
    """`weights.build_teacher`'s architecture, randomly initialised (nothing downloaded)."""
    vit = timm.create_model(TEACHER_ARCHS[(target_type, teacher)], pretrained=False, num_classes=0, img_size=img_size)
    return DinoTeacher(vit, grid=(img_size // patch_size, img_size // patch_size))


def build(args: argparse.Namespace, batch_size: int, device: torch.device):
    """Model, teacher (dino_* targets) and one synthetic batch: clips [B, 3, T, H, W], mask [B, N]."""
    torch.manual_seed(args.seed)
    model = MODELS[args.model](
        img_size=args.input_size, all_frames=args.num_frames, decoder_depth=args.decoder_depth,
        target_type=args.target_type, loss_func=resolved_loss_func(args), num_prototypes=args.num_prototypes,
        teacher_dim=TEACHER_DIMS[args.distillation_teacher] if args.target_type.startswith("dino") else None,
        ).to(device)
    teacher = None
    if args.target_type.startswith("dino"):
        teacher = random_teacher(args.target_type, args.distillation_teacher, args.input_size).to(device)
    videos = torch.randn(batch_size, 3, args.num_frames, args.input_size, args.input_size).to(device)
    mask = tube_mask(batch_size, model.encoder.grid_size, args.mask_ratio).to(device)
    return model, teacher, videos, mask


class Timeline:
    """Marks along one step; the segment that ends at a mark is charged to the mark's stage.

    CUDA: events recorded on the stream (no host sync inside the step); CPU: perf_counter.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: List[tuple] = []

    def mark(self, stage: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((stage, event))
        else:
            self.marks.append((stage, time.perf_counter()))

    def stages(self) -> Dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out = dict.fromkeys(STAGES, 0.0)
        for (_, start), (stage, end) in zip(self.marks, self.marks[1:]):
            out[stage] += start.elapsed_time(end) / 1000 if self.cuda else end - start
        return out


@contextlib.contextmanager
def sinkhorn_as(fn: Callable) -> None:
    """Let the engine's swapped prediction call `fn` in place of `sinkhorn.sinkhorn_knopp`."""
    saved = engine_for_pretraining.sinkhorn_knopp
    engine_for_pretraining.sinkhorn_knopp = fn
    try:
        yield
    finally:
        engine_for_pretraining.sinkhorn_knopp = saved


@contextlib.contextmanager
def stage_marks(timeline: Callable[[], Optional[Timeline]], model: torch.nn.Module,
                teacher: Optional[torch.nn.Module], sinkhorn: Callable):
    """Module hooks and a Sinkhorn wrapper that mark stage boundaries on `timeline()` (if not None).

    compute_loss runs: patchify and targets [teacher] -> model forward: encoder (ends at its final
    norm), encoder_to_decoder and decoder -> projection head and prototype scores (end of the
    forward) -> Sinkhorn codes of both sides -> cross-entropies and code statistics; then backward
    (ends when every trainable parameter has its gradient) and the optimizer (grad norm, AdamW).
    """
    def mark(stage):
        def hook(*_):
            t = timeline()
            if t is not None:
                t.mark(stage)
        return hook

    def timed_sinkhorn(*args, **kwargs):
        mark("loss")()
        codes = sinkhorn(*args, **kwargs)
        mark("sinkhorn")()
        return codes

    params = [p for p in model.parameters() if p.requires_grad]
    handles = [torch.autograd.graph.register_multi_grad_hook(params, mark("backward")),  # all grads computed
               model.register_forward_pre_hook(mark("targets")),
               model.encoder.norm.register_forward_hook(mark("encoder")),
               model.decoder.register_forward_hook(mark("decoder")),
               model.register_forward_hook(mark("projection"))]
    if teacher is not None:
        handles += [teacher.register_forward_pre_hook(mark("targets")), teacher.register_forward_hook(mark("teacher"))]
    try:
        with sinkhorn_as(timed_sinkhorn):
            yield
    finally:
        for h in handles:
            h.remove()


def make_step(model, objective, teacher, optimizer, scaler, videos, mask, precision: str):
    """One training step on one batch as the loop takes it; `step(timeline)` marks its stages."""
    update = TorchUpdate(model, optimizer, precision, scaler)
    sums: Dict[str, torch.Tensor] = {}
    index = MaskIndex.of(mask.cpu()).to(videos.device)  # built on the host, as objective_kernels.HostMaskIndex

    def step(timeline: Optional[Timeline] = None) -> torch.Tensor:
        set_schedules(optimizer, 1e-4, 0.05)
        with update.context(videos.device, last_micro=True):
            loss, stats = compute_loss(model, objective, videos, index, teacher=teacher)
            if timeline is not None:
                timeline.mark("loss")
            grad_norm = update.backward(loss, last_micro=True)  # ends "backward" at its last gradient
        stats.update(grad_norm=grad_norm)
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float()
        if timeline is not None:
            timeline.mark("optimizer")
        return loss.detach()
    return step


def _rss_peak_reset() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_peak_mb(reset_worked: bool) -> float:
    if reset_worked:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux: lifetime peak


def peak_tflops(device: torch.device, precision: str) -> Optional[float]:
    """Dense peak of this device and precision from PEAK_TFLOPS; None when unknown (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    kind = "bf16" if precision in ("bf16", "fp16") else (
        "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32")
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in name:
            return peaks[kind]
    return None


def count_flops(step: Callable[[], torch.Tensor]) -> tuple:
    """(FLOPs, loss) of one step of the eager model, forward and backward."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        loss = step()
    return counter.get_total_flops(), float(loss)


def cpu_pressure() -> Optional[float]:
    """/proc/pressure/cpu "some avg10" (% of the last 10 s some task waited for a CPU); None without PSI."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def time_in_turn(steps: Dict[str, Callable[[], object]], device: torch.device, iters: int
                 ) -> Dict[str, Dict[str, List[float]]]:
    """`iters` rounds of every step in turn: {name: {"wall": [s], "cpu": [process CPU s]}}.

    Alternating puts a shared machine's load on every variant alike, where timing one variant's
    steps after the other's would charge a burst of load to whichever ran during it.
    """
    out = {name: {"wall": [], "cpu": []} for name in steps}
    for _ in range(iters):
        for name, fn in steps.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            out[name]["wall"].append(time.perf_counter() - t0)
            out[name]["cpu"].append(time.process_time() - c0)
    return out


def measure(args: argparse.Namespace, model, teacher, videos, mask, device: torch.device,
            official: Optional[Callable[[], torch.Tensor]] = None) -> Dict[str, object]:
    """Build the optimizer, count FLOPs once, warm up, time the step (and its stages); one record.

    `official`: the official step, timed in turn with ours (`time_in_turn`); its figures go under
    "official" in the record.
    """
    batch_size = videos.shape[0]
    optimizer = create_optimizer(param_groups(model, weight_decay=0.05), lr=1e-4, betas=(0.9, 0.95),
                                 fused=args.fused_adamw == "on")
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    sinkhorn = SINKHORNS[args.sinkhorn]
    runner = torch.compile(model) if args.compile else model
    objective = objective_of(args, model)
    eager_step = make_step(model, objective, teacher, optimizer, scaler, videos, mask, args.precision)
    step = make_step(runner, objective, teacher, optimizer, scaler, videos, mask, args.precision)
    attention = (sdpa_kernel(SDPA_BACKENDS[args.sdpa_backend]) if args.sdpa_backend != "auto"
                 else contextlib.nullcontext())
    record: Dict[str, object] = {}
    with attention, sinkhorn_as(sinkhorn):
        official_loss = float(official()) if official is not None else None  # its first step, as ours
        flops, first_loss = count_flops(eager_step)
        for _ in range(args.warmup):
            step()
            if official is not None:
                official()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss_reset = device.type == "cpu" and _rss_peak_reset()
        pressure = [cpu_pressure()]
        timed = time_in_turn({"ours": step} if official is None else {"official": official, "ours": step},
                             device, args.iters)
        pressure.append(cpu_pressure())
        times = timed["ours"]["wall"]
        if official is not None:
            record.update(official_figures(timed, official_loss, first_loss, args.official_precision))
        record["median_cpu_s"] = round(statistics.median(timed["ours"]["cpu"]), 5)
        record["cpu_pressure_avg10"] = pressure
        if device.type == "cuda":
            peak_mb, peak_kind = torch.cuda.max_memory_allocated(device) / 2 ** 20, "cuda_max_memory_allocated"
        else:
            peak_mb, peak_kind = _rss_peak_mb(rss_reset), "cpu_peak_rss" if rss_reset else "cpu_ru_maxrss_lifetime"
        if args.breakdown:
            current: List[Optional[Timeline]] = [None]
            per_step, walls = [], []
            with stage_marks(lambda: current[0], model, teacher, sinkhorn):
                for _ in range(args.iters):
                    sync(device)
                    t0 = time.perf_counter()
                    current[0] = Timeline(device)
                    current[0].mark("start")
                    step(current[0])
                    sync(device)
                    walls.append(time.perf_counter() - t0)  # the same step on the host clock
                    per_step.append(current[0].stages())
                    current[0] = None
            record["breakdown"] = {s: round(statistics.median(d[s] for d in per_step), 5) for s in STAGES}
            record["breakdown_total_s"] = round(statistics.median(sum(d.values()) for d in per_step), 5)
            record["breakdown_steps"] = per_step  # unrounded seconds per stage, one dict per step
            record["breakdown_wall_s"] = walls
    median = statistics.median(times)
    peak = args.peak_tflops or peak_tflops(device, args.precision)
    achieved = flops / median / 1e12
    mfu = achieved / peak if peak else None
    return {
        "variant": "ours", "model": args.model, "target_type": args.target_type,
        "teacher": args.distillation_teacher if teacher is not None else None, "loss_func": resolved_loss_func(args),
        "precision": args.precision, "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch_size": batch_size, "frames": args.num_frames, "input_size": args.input_size,
        "mask_ratio": args.mask_ratio, "num_prototypes": args.num_prototypes,
        "sdpa_backend": args.sdpa_backend, "fused_adamw": bool(optimizer.defaults.get("fused")),
        "compile": args.compile, "sinkhorn": args.sinkhorn,
        "median_step_s": round(median, 5), "min_step_s": round(min(times), 5),
        "clips_per_s": round(batch_size / median, 3),
        "peak_mem_mb": round(peak_mb, 1), "peak_mem_kind": peak_kind,
        "gflops_per_clip": round(flops / batch_size / 1e9, 3), "tflops": round(achieved, 4),
        "peak_tflops": peak, "mfu": round(mfu, 4) if mfu is not None else None,
        "loss": first_loss, **record,
        "raw": {"flops_per_step": flops, "median_step_s": median, "tflops": achieved, "mfu": mfu},
    }


def official_figures(timed: Dict[str, Dict[str, List[float]]], official_loss: float, loss: float,
                     precision: str) -> Dict[str, object]:
    """Ours against the official from steps timed in turn: medians, paired ratios, losses."""
    med = {name: {kind: statistics.median(v) for kind, v in t.items()} for name, t in timed.items()}
    ours, official = timed["ours"]["wall"], timed["official"]["wall"]
    return {
        "official": {"median_step_s": round(med["official"]["wall"], 5), "min_step_s": round(min(official), 5),
                     "median_cpu_s": round(med["official"]["cpu"], 5), "loss": official_loss,
                     "precision": precision},
        "relative_to_first": round(med["ours"]["wall"] / med["official"]["wall"], 3),
        "ratio_paired": round(statistics.median(o / f for o, f in zip(ours, official, strict=True)), 3),
        "cpu_ratio": round(med["ours"]["cpu"] / med["official"]["cpu"], 3),
        "loss_rel_diff": abs(loss - official_loss) / max(abs(official_loss), 1e-12),
        "timed_in_turn": timed,
    }


def official_model_and_step(args, videos, mask, ours):
    """Build the official model from --official_dir, copy our weights, return its step function."""
    sys.path.insert(0, args.official_dir)
    saved = {m: sys.modules.pop(m) for m in ("modeling_pretrain", "modeling_finetune", "utils") if m in sys.modules}
    try:
        official = importlib.import_module("modeling_pretrain")
        official_utils = importlib.import_module("utils")
    finally:
        sys.path.remove(args.official_dir)
        for name in ("modeling_pretrain", "modeling_finetune", "utils"):
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    loss_func = resolved_loss_func(args)
    extra = dict(world_size=1, eps=args.sinkhorn_eps, sinkhorn_iterations=args.sinkhorn_iterations) \
        if loss_func == "SWAV" else {}
    model = getattr(official, args.model)(
        decoder_depth=args.decoder_depth, decoder_num_classes=ours.decoder.head.out_features, target_type=args.target_type,
        loss_func=loss_func, num_prototypes=args.num_prototypes, **extra).to(videos.device)
    model.load_state_dict(ours.state_dict(), strict=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mean = torch.tensor([0.485, 0.456, 0.406], device=videos.device).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=videos.device).view(1, 3, 1, 1, 1)
    ce, mse = torch.nn.CrossEntropyLoss(), torch.nn.MSELoss()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.official_precision]

    def step():
        # The official engine's target building and loss (engine_for_pretraining.train_one_epoch).
        with torch.no_grad():
            un = videos * std + mean
            B, C, T, H, W = un.shape
            x = un.reshape(B, C, T // 2, 2, H // 16, 16, W // 16, 16).permute(0, 2, 4, 6, 3, 5, 7, 1)
            x = x.reshape(B, -1, 2 * 16 * 16, C)
            x = (x - x.mean(-2, keepdim=True)) / (x.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
            labels = x.flatten(2)[mask].reshape(B, -1, 2 * 16 * 16 * C)
        with torch.autocast(videos.device.type, dtype=dtype, enabled=dtype is not None):
            out, (s1, q1), (s2, q2) = model(videos, mask, labels)
            if loss_func == "SWAV":
                loss = ce((s1 / 0.1).permute(0, 2, 1), q2.argmax(-1)) + ce((s2 / 0.1).permute(0, 2, 1), q1.argmax(-1))
            else:
                loss = mse(out, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach()
    del official_utils
    return step


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    failures = 0
    for batch_size in args.sweep or [args.batch_size]:
        logger.info("%s %s batch %d %s", args.model, args.target_type, batch_size, args.precision)
        try:
            model, teacher, videos, mask = build(args, batch_size, device)
            official = official_model_and_step(args, videos, mask, model) if args.official_dir else None
            print(json.dumps(measure(args, model, teacher, videos, mask, device, official)), flush=True)
        except (RuntimeError, ValueError) as e:  # out of memory, missing kernel: report, go on
            failures += 1
            print(json.dumps({"variant": "ours", "model": args.model, "target_type": args.target_type,
                              "precision": args.precision, "batch_size": batch_size, "device": device.type,
                              "sdpa_backend": args.sdpa_backend, "compile": args.compile,
                              "error": f"{type(e).__name__}: {str(e)[:300]}"}), flush=True)
        finally:
            model = teacher = videos = mask = official = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(get_args()))
