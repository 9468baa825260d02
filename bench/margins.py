"""Outcome distributions of the tests whose result depends on a training trajectory, under the CPU
kernel choices one machine can force: ATen's vector ISA (ATEN_CPU_CAPABILITY), oneDNN's
(ONEDNN_MAX_CPU_ISA), MKL's GEMM code path (MKL_ENABLE_INSTRUCTIONS) and the thread count. Each
(config, seed, measurement) runs in a fresh process (the variables are read when torch loads) and
prints one JSON line; a summary line per measurement and config closes the output.

    OMP_NUM_THREADS=1 python bench/margins.py --seeds 0 1 2 3 [--measure digit motion] [--configs ...]

digit: the digit-probe gain of 400 SIGMA steps and the loss ratio (last 50 steps / first 50);
digit_loss: the loss ratio only (no probe: about half the time); motion: the supervised accuracy.

The measurements are the tests' own functions (tests/test_learning_signal.py), on the tests' data.
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
    "threads2": {"OMP_NUM_THREADS": "2"},
}


def _test_module():
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    spec = importlib.util.spec_from_file_location("learning_signal", os.path.join(ROOT, "tests",
                                                                                "test_learning_signal.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(measure: str, seed: int, data: str) -> dict:
    """One measurement in this process."""
    import torch
    module = _test_module()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.time()
    if measure in ("digit", "digit_loss"):
        out = module.digit_probe_gain(data, seed, probe=measure == "digit")
        out["loss_ratio"] = out["loss_last"] / out["loss_first"]
        if measure == "digit":
            out["gain"] = out["after"] - out["before"]
    else:
        out = {"accuracy": module.motion_accuracy(data, seed)}
    return {**out, "capability": torch.backends.cpu.get_cpu_capability(), "seconds": round(time.time() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", nargs="+", default=["digit", "motion"], choices=["digit", "digit_loss", "motion"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--data", default=None, help="the tests' digit videos (made here if absent)")
    p.add_argument("--worker", nargs=2, metavar=("MEASURE", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    data = args.data or os.path.join(tempfile.gettempdir(), "margins_digits")
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), data)))
        return
    if not os.path.exists(os.path.join(data, "direction", "val.csv")):
        _test_module().make_data(data)
    results = {}
    for measure in args.measure:
        for config in args.configs:
            for seed in args.seeds:
                env = {**os.environ, "OMP_NUM_THREADS": "1", **CONFIGS[config]}
                run = subprocess.run([sys.executable, __file__, "--data", data, "--worker", measure, str(seed)],
                                     env=env, capture_output=True, text=True)
                if run.returncode:
                    raise SystemExit(f"{measure} {config} seed {seed} failed:\n{run.stderr[-2000:]}")
                row = {"measure": measure, "config": config, "seed": seed,
                       **json.loads(run.stdout.strip().splitlines()[-1])}
                print(json.dumps(row), flush=True)
                for key in ("gain", "loss_ratio", "accuracy"):
                    if key in row:
                        results.setdefault((measure, key, config), []).append(row[key])
    for (measure, key, config), values in results.items():
        print(json.dumps({"summary": measure, "value": key, "config": config, "min": min(values),
                          "max": max(values), "values": values}))


if __name__ == "__main__":
    main()
