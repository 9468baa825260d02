"""Clips per second per core of each video backend on the real-world quirk corpus.

Encodes the corpus of tests/quirk_corpus.py with the system's ffmpeg (31 short files, 2-3 s at
112x80 to 176x144, every container and codec of DATASET.md "Backends and frame numbering") into
`--out`, then times, per backend, opening each file and decoding `--clips` clips of 16 frames
(dense sampling, rate 2, as the fine-tuning train clips) in this process on one thread. CPU time
of the process (all its threads), so a shared machine's other jobs do not count. A backend that
cannot read a file (decord: AV1, a cut-off last packet) is timed without it and the file named.
One JSON line per backend and file group (`all`: every file all backends read), then a summary.

    OMP_NUM_THREADS=1 python bench/bench_corpus.py --out /tmp/corpus
"""
import argparse
import json
import os
import sys
import time
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from datasets.decoding import VideoError, open_video  # noqa: E402
from datasets.frame_indices import linspace_indices  # noqa: E402
from quirk_corpus import make_corpus  # noqa: E402


def _clip_indices(n: int, clips: int) -> List[List[int]]:
    generator = torch.Generator().manual_seed(0)
    return [linspace_indices(n, 16, 2, generator) for _ in range(clips)]


def _time(path: str, backend: str, clips: int) -> float:
    """CPU seconds to open `path` once per clip and decode the clip (as a DataLoader item does)."""
    n = open_video(path, backend).num_frames
    start = time.process_time()
    for indices in _clip_indices(n, clips):
        open_video(path, backend).get_frames(indices)
    return time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder the corpus is encoded into")
    p.add_argument("--backends", nargs="+", default=["pyav", "decord", "torchcodec"])
    p.add_argument("--clips", type=int, default=6, help="clips per file and backend")
    args = p.parse_args()
    torch.set_num_threads(1)
    corpus = make_corpus(args.out)
    seconds: Dict[str, Dict[str, float]] = {b: {} for b in args.backends}
    for name, path in corpus.items():
        for backend in args.backends:
            try:
                seconds[backend][name] = _time(path, backend, args.clips)
            except (VideoError, ImportError) as e:
                print(json.dumps({"backend": backend, "file": name, "unreadable": str(e)[:160]}), flush=True)
    common = sorted(set.intersection(*(set(s) for s in seconds.values())))
    for backend, by_file in seconds.items():
        for group, names in (("all", common), ("readable", sorted(by_file))):
            cpu, clips = sum(by_file[n] for n in names), len(names) * args.clips
            print(json.dumps({"backend": backend, "files": group, "num_files": len(names), "clips": clips,
                              "cpu_ms_per_clip": round(1e3 * cpu / clips, 2),
                              "clips_per_s_per_core": round(clips / cpu, 1)}), flush=True)


if __name__ == "__main__":
    main()
