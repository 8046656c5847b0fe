"""Fingerprints and provenance: what makes two results the same result.

A method's fingerprint hashes its name, resolved config, weights hash and the package version.
A run key adds the dataset fingerprint, the seed and the threshold sweep. Store rows are keyed by
run key, so equal keys mean rows can be reused and different keys can never be mixed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import refbench

TRACKED_PACKAGES = ("numpy", "pycocotools", "pluggy", "pillow", "torch", "diffusers",
                    "transformers", "accelerate", "peft", "spacy")


def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def method_fingerprint(name: str, config: dict[str, Any], weights: str = "") -> str:
    return _hash({"method": name, "config": config, "weights": weights,
                  "refbench": refbench.__version__})


def run_key(method_fp: str, dataset_fp: str, seed: int, thresholds: tuple[float, ...],
            protocol: Any = None) -> str:
    """The key a run's rows are stored under; ``protocol`` (None for refbench's default, which
    keeps earlier keys) is part of it, since another protocol gives other counts."""
    payload = {"method": method_fp, "dataset": dataset_fp, "seed": seed, "thresholds": list(thresholds)}
    if protocol is not None:
        payload["protocol"] = protocol
    return _hash(payload)


@lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """Versions of Python, refbench and the libraries that shape results (no imports)."""
    found: dict[str, str | None] = {"python": platform.python_version(),
                                    "refbench": refbench.__version__}
    for package in TRACKED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


@lru_cache(maxsize=1)
def git_hash() -> str | None:
    """The commit of the refbench checkout in use (with '-dirty' if modified), if any."""
    source = Path(refbench.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=source, capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
