"""Ablation grids: one method, the cartesian product of parameter values, one run per cell.

This module only expands a grid into candidates (one per cell, labelled by its values);
evaluating them is the core's (``refbench.evaluate``), with ``together=True``: cells run
batch-major, so each batch of images is loaded once and work that does not depend on the varied
parameter (a diffusion method's latents and noise, cached per sample and seed) is shared while
it is still in cache. Each cell is an ordinary run (its fingerprint includes the cell's config),
so an interrupted grid resumes, a cell computed before (by a grid or by ``refbench run --set``)
is reused, and cells never mix.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from refbench.candidates import Candidate, candidate, config_class
from refbench.config import Override, config_dict
from refbench.errors import UserError, did_you_mean
from refbench.plugins import PluginHost
from refbench.results.scored import Scored
from refbench.results.summary import Results


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


def check_grid(host: PluginHost, grid: GridSpec) -> list[Candidate]:
    """The grid's cells as candidates, after failing on an unknown method or parameter, a
    parameter also fixed, or two values that resolve to the same config (they would be one
    cell). Nothing is built."""
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
    cells = []
    for values in expand(grid):
        label = cell_label(values)
        cell = candidate(host, grid.method, cell_overrides(grid, values), label=label)
        resolved = str(config_dict(cell.config))
        if resolved in seen:
            raise UserError(f"grid cells {seen[resolved]!r} and {label!r} are the same config: "
                            f"drop the duplicate value")
        seen[resolved] = label
        cells.append(cell)
    return cells


@dataclass
class GridRun:
    """A finished grid: the cells' values and their figures on the reported split."""

    grid: GridSpec
    results: Results
    values: list[dict[str, str]] = field(default_factory=list)

    @property
    def split(self) -> str:
        return self.results.split_names[0]

    @property
    def cells(self) -> list[tuple[dict[str, str], Scored]]:
        scored = self.results.on(self.split)
        return [(values, scored[cell_label(values)]) for values in self.values]


def grid_payload(result: GridRun) -> dict[str, Any]:
    """JSON-ready description of a finished grid."""
    grid = result.grid
    return {"method": grid.method, "params": grid.params,
            "fixed": [f"{o.target}.{o.key}={o.text}" for o in grid.fixed], "metric": grid.metric,
            "cells": [{"values": values, **scored.as_dict()} for values, scored in result.cells]}
