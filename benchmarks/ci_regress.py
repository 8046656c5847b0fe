"""How long `refbench regress leaderboards/ci.yaml` takes, as a user's CI job runs it: a fresh
process, an empty store (regress always computes in a temporary one), no stored data index
(REFBENCH_CACHE pointed at an empty folder), the RefShapes data already generated (CI keeps
./data between steps; pass --fresh-data to time the generation too). Prints a table of wall
times, one row per repeat, and the per-method split from `--durations`-style progress lines is
left to the spec's own output.

    python benchmarks/ci_regress.py [--repeats 2] [--spec leaderboards/ci.yaml]

Target (issue: regression checks that fit a user's CI job): at most 45 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=REPO / "leaderboards" / "ci.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fresh-data", action="store_true", help="generate the data in a new folder")
    args = parser.parse_args()
    rows = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "REFBENCH_CACHE": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1"}
            cwd = Path(tmp) if args.fresh_data else REPO
            if args.fresh_data:  # the spec's data roots are relative: run it from an empty folder
                (Path(tmp) / "leaderboards").symlink_to(REPO / "leaderboards")
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "refbench", "regress", str(args.spec),
                                   "--no-progress"], cwd=cwd, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
        verdict = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()
        rows.append([repeat + 1, "fresh data" if args.fresh_data else "data present", wall,
                     done.returncode, verdict[:70]])
    print_table(["repeat", "data", "wall s", "exit", "verdict"], rows)


if __name__ == "__main__":
    main()
