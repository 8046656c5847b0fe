"""Ablation grids: one method, the cartesian product of parameter values, one run per cell.

Each cell is an ordinary run (its fingerprint includes the cell's config), so an interrupted grid
resumes, a cell computed before (by a grid or by ``refbench run --set``) is reused, and cells
never mix. The cells are evaluated batch-major through ``runner.evaluate``: each batch of images
is loaded once and every cell predicts on it before the next, so work that does not depend on
the varied parameter (a diffusion method's latents and noise, cached per sample and seed) is
shared while it is still in cache.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from refbench.calibration import check_split_policy
from refbench.config import Override, config_dict
from refbench.errors import UserError, did_you_mean
from refbench.plugins import PluginHost
from refbench.runner import (RunOptions, SplitPlan, config_class, plan_split, resolve_config,
                             run_configs)
from refbench.scorecard import Calibration, Scored, StatsOptions, choose, score
from refbench.store import Store


@dataclass(frozen=True)
class GridSpec:
    """``method`` evaluated at every combination of ``params`` (name -> values, as text), with
    ``fixed`` overrides shared by all cells."""

    method: str
    params: dict[str, list[str]]
    fixed: list[Override] = field(default_factory=list)
    metric: str = "mIoU"  # plotted against the first parameter

    @property
    def name(self) -> str:
        return f"{self.method}: " + " x ".join(self.params)


@dataclass
class GridCell:
    values: dict[str, str]  # parameter -> value as given
    scored: Scored

    def label(self) -> str:
        return cell_label(self.values)


def cell_label(values: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def parse_param(text: str) -> tuple[str, list[str]]:
    """``alpha=0.1,0.3`` -> ("alpha", ["0.1", "0.3"])."""
    name, eq, raw = text.partition("=")
    values = [v.strip() for v in raw.split(",") if v.strip()]
    if not eq or not name.strip() or not values:
        raise UserError(f"bad --param {text!r}: expected NAME=V1,V2,... e.g. alpha=0.1,0.5,0.9")
    return name.strip(), values


def params_from(items: Iterable[str]) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for item in items:
        name, values = parse_param(item)
        if name in params:
            raise UserError(f"--param {name} is given twice: list all its values in one --param")
        params[name] = values
    return params


def expand(grid: GridSpec) -> list[dict[str, str]]:
    """The cells, in the order of the cartesian product (the last parameter varies fastest)."""
    names = list(grid.params)
    return [dict(zip(names, combo)) for combo in itertools.product(*grid.params.values())]


def cell_overrides(grid: GridSpec, values: dict[str, str]) -> list[Override]:
    return [*grid.fixed, *(Override(grid.method, k, v) for k, v in values.items())]


def check_grid(host: PluginHost, grid: GridSpec) -> None:
    """Fail before computing anything: unknown method or parameter, a parameter also fixed,
    or two values that resolve to the same config (they would be one cell)."""
    spec = host.method(grid.method)
    config_cls = config_class(spec)
    fields = {f.name for f in dataclasses.fields(config_cls)} if config_cls else set()
    if not grid.params:
        raise UserError(f"grid over {grid.method}: give at least one parameter (--param NAME=V1,V2)")
    for name in grid.params:
        if name not in fields:
            raise did_you_mean(name, fields, f"parameter of method {grid.method!r}")
    for o in grid.fixed:
        if o.target not in (grid.method, "*"):
            raise UserError(f"--set {o.target}.{o.key}: a grid runs only {grid.method!r}")
        if o.key in grid.params:
            raise UserError(f"{grid.method}.{o.key} is both varied (--param) and fixed (--set)")
    seen: dict[str, str] = {}
    for values in expand(grid):
        resolved = str(config_dict(resolve_config(spec, cell_overrides(grid, values))))
        label = cell_label(values)
        if resolved in seen:
            raise UserError(f"grid cells {seen[resolved]!r} and {label!r} are the same config: "
                            f"drop the duplicate value")
        seen[resolved] = label


@dataclass
class GridRun:
    grid: GridSpec
    plan: SplitPlan  # the reported split
    cells: list[GridCell]


def run_grid(host: PluginHost, grid: GridSpec, options: RunOptions, store: Store,
             calibration: Calibration, stats: StatsOptions) -> GridRun:
    """Evaluate every cell on ``options.split`` (and on the calibration split, to choose each
    cell's threshold), batch-major, and score them."""
    check_grid(host, grid)
    if calibration.split is not None:
        check_split_policy(calibration.split, [options.split], calibration.tune_on_reported_split,
                           f"grid {grid.name}")
    spec = host.method(grid.method)
    cells = expand(grid)
    reported = plan_split(host, options)
    plans = [reported]
    if calibration.split not in (None, options.split):
        plans.append(plan_split(host, dataclasses.replace(options, split=calibration.split)))
    runs = run_configs(host, [(spec, cell_overrides(grid, v)) for v in cells], plans, store,
                       options, together=True)
    out = []
    for values, per_plan in zip(cells, runs):
        calibrating = (per_plan[-1], plans[-1]) if calibration.split is not None else None
        threshold = choose(store, calibration, options.split, calibrating)
        out.append(GridCell(values, score(store, per_plan[0], reported, threshold, stats)))
    return GridRun(grid, reported, out)


def grid_payload(result: GridRun) -> dict[str, Any]:
    """JSON-ready description of a finished grid."""
    grid = result.grid
    return {"method": grid.method, "params": grid.params,
            "fixed": [f"{o.target}.{o.key}={o.raw}" for o in grid.fixed], "metric": grid.metric,
            "cells": [{"values": c.values, **c.scored.as_dict()} for c in result.cells]}
