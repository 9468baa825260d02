"""Outcome distributions of the tests whose result depends on a training trajectory, under the CPU
kernel choices one machine can force: ATen's vector ISA (ATEN_CPU_CAPABILITY), oneDNN's
(ONEDNN_MAX_CPU_ISA), MKL's GEMM code path (MKL_ENABLE_INSTRUCTIONS) and the thread count. Each
(measurement, config) runs in a fresh process (the variables are read when torch loads); every
(config, seed, measurement) prints one JSON line; a summary line per measurement and config closes
the output.

    OMP_NUM_THREADS=1 python bench/margins.py --seeds 0 1 2 3 [--measure digit motion] [--configs ...]

digit: the digit-probe gain of 400 SIGMA steps and the loss ratio (last 50 steps / first 50);
digit_loss: the loss ratio only (no probe: about half the time); motion: the supervised accuracy;
overfit_{pixel,mlp,dino}: tests/test_objective.py's loss ratio (40 steps on one batch); planted:
tests/test_attentive_probe.py's planted-token accuracies (the lower of the best head and the linear
probe as "accuracy", and the gap between the two heads).

The measurements are the tests' own functions (tests/test_learning_signal.py, test_objective.py,
test_attentive_probe.py), on the tests' data; one process per (measurement, config) runs every seed.
Run serially: on a shared 2-core machine a second process at once changes nothing but the time.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> environment; "avx512" is only honoured on a CPU that has it (else ATen keeps its best).
CONFIGS = {
    "base": {},
    "aten_default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten_avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten_avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "onednn_avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "onednn_sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "mkl_avx": {"MKL_ENABLE_INSTRUCTIONS": "AVX"},
    "mkl_sse42": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "mkl_cbwr": {"MKL_CBWR": "COMPATIBLE"},  # MKL's conditional-reproducibility code path (SSE2 kernels)
    "threads2": {"OMP_NUM_THREADS": "2"},
}


MEASURES = ("digit", "digit_loss", "motion", "overfit_pixel", "overfit_mlp", "overfit_dino", "planted")


def _test_module(name: str = "test_learning_signal"):
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tests", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(measure: str, seed: int, data: str) -> dict:
    """One measurement in this process."""
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.time()
    if measure in ("digit", "digit_loss"):
        out = _test_module().digit_probe_gain(data, seed, probe=measure == "digit")
        out["loss_ratio"] = out["loss_last"] / out["loss_first"]
        if measure == "digit":
            out["gain"] = out["after"] - out["before"]
    elif measure == "motion":
        out = {"accuracy": _test_module().motion_accuracy(data, seed)}
    elif measure.startswith("overfit_"):  # tests/test_objective.py::test_tiny_model_overfits_fixed_batch
        objective = {"overfit_pixel": ("pixel", "L2"), "overfit_mlp": ("mlp", "SWAV"),
                     "overfit_dino": ("dino_v1", "SWAV")}[measure]
        out = {"loss_ratio": _test_module("test_objective").overfit_ratio(*objective, seed=seed)}
    else:  # tests/test_attentive_probe.py::test_attentive_probe_learns_planted_directions_...
        acc = _test_module("test_attentive_probe").planted_accuracies(seed)
        out = {"accuracy": min(acc["grid"][0], acc["linear"]), "grid": acc["grid"], "linear": acc["linear"],
               "gap": acc["grid"][0] - acc["grid"][1]}
    return {**out, "capability": torch.backends.cpu.get_cpu_capability(), "seconds": round(time.time() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", nargs="+", default=["digit", "motion"], choices=MEASURES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--data", default=None, help="the tests' digit videos (made here if absent)")
    p.add_argument("--worker", nargs=2, metavar=("MEASURE", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    data = args.data or os.path.join(tempfile.gettempdir(), "margins_digits")
    if args.worker:  # one process per config: every seed of it
        for seed in args.worker[1].split(","):
            print(json.dumps(worker(args.worker[0], int(seed), data)), flush=True)
        return
    if any(m in ("digit", "digit_loss", "motion") for m in args.measure) and \
            not os.path.exists(os.path.join(data, "direction", "val.csv")):
        _test_module().make_data(data)
    results = {}
    for measure in args.measure:
        for config in args.configs:
            env = {**os.environ, "OMP_NUM_THREADS": "1", **CONFIGS[config]}
            run = subprocess.run([sys.executable, __file__, "--data", data, "--worker", measure,
                                  ",".join(map(str, args.seeds))], env=env, capture_output=True, text=True)
            if run.returncode:
                raise SystemExit(f"{measure} {config} failed:\n{run.stderr[-2000:]}")
            for seed, line in zip(args.seeds, run.stdout.strip().splitlines()[-len(args.seeds):]):
                row = {"measure": measure, "config": config, "seed": seed, **json.loads(line)}
                print(json.dumps(row), flush=True)
                for key in ("gain", "loss_ratio", "accuracy", "gap"):
                    if key in row:
                        results.setdefault((measure, key, config), []).append(row[key])
    for (measure, key, config), values in results.items():
        print(json.dumps({"summary": measure, "value": key, "config": config, "min": min(values),
                          "max": max(values), "values": values}))


if __name__ == "__main__":
    main()
