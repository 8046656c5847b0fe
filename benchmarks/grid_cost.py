"""What a grid costs against running its cells one by one.

    python benchmarks/grid_cost.py                       # the demo method, 9 alpha values
    python benchmarks/grid_cost.py --method diffsegmenter_ab --param alpha=0.1,0.5,0.9 --limit 40

Both modes start from an empty store and an empty cache and compute the same rows; "one by one"
evaluates each cell over the whole split before the next (as separate `refbench run --set`
invocations would), "grid" evaluates all cells batch-major (`refbench grid`). The default method,
`shared_blobs` from tests/plugins, has a costly part that does not depend on its parameter,
cached per (image, seed) in a small LRU, as the diffusion methods cache latents and noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "plugins")]
os.environ.setdefault("REFBENCH_PLUGINS", "rb_testplugin")

from refbench.config import parse_overrides  # noqa: E402
from refbench.core import Settings, compute, plan_split  # noqa: E402
from refbench.data.source import DataSource, open_dataset  # noqa: E402
from refbench.grid import GridSpec, check_grid, params_from  # noqa: E402
from refbench.plugins import PluginHost  # noqa: E402
from refbench.store import Store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="shared_blobs")
    parser.add_argument("--param", action="append", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=None)
    parser.add_argument("--dataset", default="refshapes")
    parser.add_argument("--split", default="val")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    params = args.param or ["alpha=0.1,0.3,0.5,0.7,0.8,0.85,0.9,0.95,1.0"]
    fixed = args.overrides if args.overrides is not None else (
        ["shared_blobs.cost=40"] if args.method == "shared_blobs" else [])

    host = PluginHost()
    grid = GridSpec(args.method, params_from(params), parse_overrides(fixed))
    settings = Settings(limit=args.limit, batch_size=args.batch_size)
    source = DataSource(args.dataset, args.data_root)
    plan = plan_split(open_dataset(host, source, generate=True), source.resolved_root(host),
                      args.split, settings)
    configs = check_grid(host, grid)
    def clear() -> None:
        """Empty every per-(image, seed) cache: separate invocations would start empty."""
        getattr(sys.modules.get("rb_testplugin"), "clear_shared", lambda: None)()
        latents = sys.modules.get("refbench.diffusion.latents")
        if latents is not None:
            latents.clear_cache()

    def shared_computations() -> object:
        if args.method == "shared_blobs":
            return getattr(sys.modules.get("rb_testplugin"), "SHARED_CALLS", {}).get("computed", "-")
        latents = sys.modules.get("refbench.diffusion.latents")
        return latents.stats["misses"] if latents is not None else "-"

    timings = {}
    for mode, together in (("one by one", False), ("grid (batch-major)", True)):
        clear()
        missed = 0
        with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "store.sqlite") as store:
            start = time.perf_counter()
            if together:
                compute(host, configs, [plan], store, settings, together=True)
                missed = shared_computations()
            else:  # each cell as its own invocation: nothing cached from the cell before
                for config in configs:
                    clear()
                    compute(host, [config], [plan], store, settings)
                    found = shared_computations()
                    missed = found if isinstance(found, str) else missed + found
            timings[mode] = time.perf_counter() - start
        timings[mode + " shared"] = missed

    n = len(plan.samples)
    print(f"{grid.name} ({', '.join(f'{k}: {len(v)} values' for k, v in grid.params.items())}), "
          f"{len(configs)} cells x {n} samples of {args.dataset} {args.split}, batch {args.batch_size}")
    print("| mode | shared computations | seconds | ms per cell-sample | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = timings["one by one"]
    for mode in ("one by one", "grid (batch-major)"):
        t = timings[mode]
        print(f"| {mode} | {timings[mode + ' shared']} | {t:.2f} | {1000 * t / (n * len(configs)):.1f} "
              f"| {base / t:.2f}x |")


if __name__ == "__main__":
    main()
