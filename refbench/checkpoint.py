"""Checkpoints of trained methods: tensors in safetensors, everything else in JSON.

Nothing here unpickles: safetensors holds only tensors, JSON only data, and optimizer state is
read with ``torch.load(weights_only=True)``. A checkpoint's hash (of its tensor file) is part of
the method's fingerprint, so results of two checkpoints are never mixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from refbench.data.files import file_sha256
from refbench.errors import UserError


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``path`` (.safetensors) and ``path`` with .json beside it, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
    meta_path = path.with_suffix(".json")
    tmp_meta = meta_path.with_name(meta_path.name + f".tmp{os.getpid()}")
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    os.replace(tmp_meta, meta_path)
    return path


def load(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint, with one-line errors for a missing or bad file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: train one with refbench train, or "
                        f"fix the path")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"checkpoint {path} is not a readable safetensors file ({error})") from None
    return tensors, read_sidecar(path.with_suffix(".json"))


def read_sidecar(meta_path: Path) -> dict[str, Any]:
    """The checkpoint's JSON sidecar (what it was trained for, with which config), checked: a
    JSON object whose ``method`` and ``backbone`` are text and whose ``config`` is an object."""
    if not meta_path.is_file():
        return {}
    fix = "restore it from where the checkpoint came from, or delete it to load the tensors alone"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"checkpoint sidecar {meta_path} is not valid JSON ({error}): {fix}") from None
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint sidecar {meta_path} holds a JSON {type(meta).__name__}, not "
                        f"an object: {fix}")
    for key, kind in (("method", str), ("backbone", str), ("config", dict)):
        if key in meta and meta[key] is not None and not isinstance(meta[key], kind):
            raise UserError(f"checkpoint sidecar {meta_path}: {key} is {meta[key]!r}, not "
                            f"{'text' if kind is str else 'an object'}: {fix}")
    return meta


def checkpoint_hash(path: Path | str) -> str:
    return file_sha256(Path(path))[:16]
