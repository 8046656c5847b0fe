"""Throughput of 1 vs 2 processes, and the main process's merge time.

On a 2-core machine two processes cannot run much faster than one; the point is that sharding
and merging add little. Reference methods over RefShapes val, and DiffSegmenter on the tiny
backbone over a subset; then the merge of a shard holding 100k synthetic rows.

    python benchmarks/distributed_throughput.py [--limit-tiny 60]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table  # noqa: E402
from refbench.store import RunRecord, SampleRow, Store  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_run(processes: int, out: Path, args: list[str]) -> tuple[float, dict]:
    launcher = [sys.executable, "-m", "refbench"] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
        str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_port()), "-m", "refbench"]
    start = time.perf_counter()
    subprocess.run([*launcher, "run", *args, "--out", str(out), "--no-progress"], check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start, json.loads((out / "results.json").read_text())


def merge_time(rows: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        record = RunRecord("k", "m", "fp", {}, "d", "val", "dfp", 0, tuple(np.arange(1, 20) / 20),
                           {}, None, None)
        shard = Store(Path(tmp) / "shard.sqlite")
        shard.register_run(record)
        inter = np.arange(19)
        for start in range(0, rows, 5000):
            shard.write("k", [SampleRow(str(i), i, str(i), inter, inter + 5, 7, False,
                                        {"size": [2, 2], "counts": "04"}, {"kind": "plain"}, {})
                              for i in range(start, min(rows, start + 5000))])
        shard.close()
        store = Store(Path(tmp) / "store.sqlite")
        began = time.perf_counter()
        merged = store.merge(Path(tmp) / "shard.sqlite")
        seconds = time.perf_counter() - began
        assert merged == rows == store.count("k")
        store.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit-tiny", type=int, default=60)
    args = parser.parse_args()
    jobs = [("full_image,gt_box", ["--methods", "full_image,gt_box"]),
            ("diffsegmenter (tiny)", ["--methods", "diffsegmenter", "--set", "*.backbone=tiny",
                                      "--set", "*.device=cpu", "--limit", str(args.limit_tiny)])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, job in jobs:
            seconds = {}
            for n in (1, 2):
                seconds[n], payload = timed_run(n, Path(tmp) / f"{label[:4]}-{n}", job)
                samples = payload["dataset"]["n_samples"] * len(payload["results"])
            rows.append([label, samples, seconds[1], seconds[2], samples / seconds[1],
                         samples / seconds[2], seconds[1] / seconds[2]])
    print(f"RefShapes val, {os.cpu_count()} CPU cores; wall time includes process start-up")
    print_table(["methods", "predictions", "1 proc s", "2 procs s", "1 proc /s", "2 procs /s", "speed-up"], rows)
    print(f"merge of a shard with 100,000 rows into the store: {merge_time(100_000):.2f} s")


if __name__ == "__main__":
    main()
