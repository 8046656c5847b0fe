"""Backbones: the denoiser (UNet or MM-DiT transformer), VAE, text encoders, tokenizers and noise
scheduler of a latent diffusion model, loaded together; the family (``families.py``) is read
from the directory's model_index.json.

A backbone is named by a registered name (a plugin's ``BackboneSpec``: the presets, ``sd15``),
by a local directory in the diffusers layout, or by a hub id. Loading goes through diffusers'
and transformers' ``from_pretrained``, which honour HF_HOME and HF_HUB_OFFLINE; a model that is
not available locally gives a one-line error saying where refbench looked and what to do.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from refbench.diffusion.families import COMPONENTS, PIPELINES, detect_family
from refbench.errors import UserError, did_you_mean
from refbench.hub import check_hub, hub_home, hub_offline
from refbench.plugins import PluginHost
from refbench.specs import resolve

Dtype = Literal["auto", "fp32", "fp16", "bf16"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Backbone:
    """The components of one latent diffusion model, on one device and dtype.

    ``family`` (``refbench.diffusion.families``) says which of the optional parts are present:
    a UNet (sd1, sd2, sdxl) or an MM-DiT ``transformer`` (sd3, flux), and a second and third
    text encoder with their tokenizers (sdxl: two CLIPs; sd3: two CLIPs and T5; flux: CLIP and
    T5)."""

    name: str
    unet: Any  # None for the MM-DiT families, whose denoiser is ``transformer``
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    fingerprint: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    family: str = "sd1"
    transformer: Any = None
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    text_encoder_3: Any = None
    tokenizer_3: Any = None
    native_size: int = 0  # the input size, where the denoiser's config does not record it (Flux)

    @property
    def denoiser(self) -> Any:
        """The network that predicts the noise (or velocity): the UNet or the transformer."""
        return self.unet if self.unet is not None else self.transformer

    @property
    def components(self) -> tuple[str, ...]:
        """The family's component names (model_index.json's keys)."""
        return tuple(COMPONENTS[self.family])

    @property
    def weighted_components(self) -> tuple[str, ...]:
        """The names of the parts with weights: the denoiser, the VAE and every text encoder."""
        return tuple(p for p in self.components if not p.startswith(("tokenizer", "scheduler")))

    @property
    def modules(self) -> list[Any]:
        return [getattr(self, part) for part in self.weighted_components]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        """The input resolution the denoiser was built for (512 for SD 1.5, 1024 for SDXL)."""
        if self.native_size:
            return self.native_size
        return int(self.denoiser.config.sample_size) * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        """What the denoiser predicts: epsilon, v_prediction (SD 2.x 768) or flow (SD3, Flux)."""
        return str(getattr(self.scheduler.config, "prediction_type", None) or "flow")

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    def to(self, device: torch.device, dtype: torch.dtype) -> Backbone:
        for part in self.modules:
            current = next(part.parameters())
            if current.device != device or current.dtype != dtype:
                part.to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype
        return self

    def eval(self) -> Backbone:
        for part in self.modules:
            part.eval()
        return self

    def save(self, directory: Path) -> Path:
        """Write the diffusers directory layout (model_index.json and one folder per part)."""
        directory = Path(directory)
        for part in self.components:
            getattr(self, part).save_pretrained(directory / part)
        index: dict[str, Any] = {"_class_name": PIPELINES[self.family], "_refbench_backbone": self.name,
                                 "_refbench_family": self.family}
        if self.native_size:
            index["_refbench_image_size"] = self.native_size
        for part in self.components:
            obj = getattr(self, part)
            index[part] = [obj.__class__.__module__.split(".")[0], obj.__class__.__name__]
        (directory / "model_index.json").write_text(json.dumps(index, indent=2))
        return directory


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # one GPU per process under accelerate launch / torchrun
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but CUDA is not available: use device=cpu")
    return resolved


def resolve_dtype(dtype: Dtype, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on CUDA and fp32 elsewhere: what the training-free originals run (their
    scripts call ``.half()`` / ``torch_dtype=torch.float16`` on a GPU), and all a CPU can run."""
    if dtype == "auto":
        return DTYPES["fp16" if device.type == "cuda" else "fp32"]
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use auto, fp32, fp16 or bf16")
    if dtype != "fp32" and device.type != "cuda":
        raise UserError(f"dtype {dtype} needs a CUDA device; on {device.type} use dtype=fp32")
    return DTYPES[dtype]


def load_pretrained(source: str, device: torch.device, dtype: torch.dtype, name: str = "") -> Backbone:
    """Load a backbone from a diffusers-layout directory or a hub id."""
    local = Path(source).expanduser()
    is_dir = local.is_dir()
    if not is_dir and (source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1)):
        raise UserError(f"backbone directory {source} does not exist: give a directory in the "
                        f"diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    where = str(local) if is_dir else source
    offline = hub_offline()
    bundled = ["--backbone", "shapes"] if name != "shapes" else []
    if not is_dir:
        _check_hub(source, name, bundled)
    kwargs: dict[str, Any] = {"local_files_only": offline} if not is_dir else {}
    try:
        with _no_loading_bars(is_dir):
            index = _model_index(where, kwargs)
            family = detect_family(index, _unet_config(where, index, kwargs))
            parts = _components(where, family, kwargs)
    except (OSError, ValueError) as error:
        home = hub_home()
        looked = f"in {local}" if is_dir else f"on the hub and in the cache under {home}" + (
            " (HF_HUB_OFFLINE is set)" if offline else "")
        raise UserError(
            f"backbone {name or source!r} ({source}) could not be loaded {looked}: "
            f"{str(error).splitlines()[0][:160]}; download it to the cache or a local directory, "
            f"or pick another with --backbone shapes (the bundled model) or a directory path",
            fix_args=bundled) from None
    backbone = Backbone(name or source, fingerprint=_pretrained_fingerprint(
                            local if is_dir else None, parts.get("unet", parts.get("transformer"))),
                        family=family, native_size=_native_size(index, family), **{"unet": None, **parts})
    return backbone.to(device, dtype).eval()


def _check_hub(repo: str, name: str, fix: list[str]) -> None:
    """A hub model not in the cache fails at once when the hub cannot be reached (refbench.hub)."""
    how = (f"download it where there is network (huggingface-cli download {repo}) into {hub_home()}, "
           f"give a local directory, or use --backbone shapes (the bundled model)")
    check_hub(repo, f"backbone {name or repo!r}", how, probe="model_index.json", fix=fix)


def _model_index(where: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """model_index.json of a directory or hub snapshot ({} where there is none: an SD 1.x layout)."""
    local = Path(where) / "model_index.json"
    if local.is_file():
        return json.loads(local.read_text())
    if Path(where).is_dir():
        return {}
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(where, "model_index.json", **kwargs)).read_text())


def _unet_config(where: str, index: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    if "unet" not in index and index:
        return None
    from diffusers import UNet2DConditionModel

    return dict(UNet2DConditionModel.load_config(where, subfolder="unet", **kwargs))


def _native_size(index: dict[str, Any], family: str) -> int:
    """Flux records no sample size: its pipeline's default is 1024 (128 latent cells)."""
    return int(index.get("_refbench_image_size", 1024 if family == "flux" else 0))


def _components(where: str, family: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every component of ``family``, each with its class's ``from_pretrained``."""
    import importlib

    parts = {}
    for part, (library, class_name) in COMPONENTS[family].items():
        cls = getattr(importlib.import_module(library), class_name)
        if part.startswith("tokenizer"):
            from transformers import AutoTokenizer

            cls = AutoTokenizer
        parts[part] = cls.from_pretrained(where, subfolder=part, **kwargs)
    return parts


@contextmanager
def _no_loading_bars(quiet: bool) -> Iterator[None]:
    """Hide the libraries' per-file loading bars for a local directory: a few lines of tqdm per
    load would bury refbench's own output, and a one-line error would no longer be one line.
    Hub loads keep them, since there they show a download's progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [lib for lib in (diffusers_logging, transformers_logging) if quiet and lib.is_progress_bar_enabled()]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()


HASHED_BYTES = 64 << 20  # weight files up to this size are hashed whole


def _pretrained_fingerprint(directory: Path | None, unet: Any) -> str:
    """Directory loads: names, sizes and configs of the files, and the bytes of weight files
    small enough to hash in milliseconds (a retrained miniature model keeps its sizes); hub
    loads: the snapshot path (which carries the commit hash). Hashing gigabytes of weights on
    every run would be slow."""
    digest = hashlib.sha256()
    if directory is not None:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and path.suffix in {".json", ".txt", ".safetensors", ".bin"}:
                size = path.stat().st_size
                digest.update(f"{path.relative_to(directory)}:{size}".encode())
                if path.suffix in {".json", ".txt"} or size <= HASHED_BYTES:
                    digest.update(path.read_bytes())
    else:
        digest.update(str(getattr(unet.config, "_name_or_path", "")).encode())
        digest.update(json.dumps(dict(unet.config), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _Source:
    """Where a backbone comes from: a registered factory with its options, or a directory or
    hub id. Equal sources give the same model, whichever plugin host named them."""

    name: str
    factory: str | None
    options: str  # JSON of the factory's options
    path: str | None


def _source(host: PluginHost, name: str) -> _Source:
    if name in host.backbones:
        spec = host.backbone(name)
        return _Source(name, spec.factory, json.dumps(spec.options, sort_keys=True, default=str), None)
    if Path(name).expanduser().is_dir() or "/" in name:
        return _Source(name, None, "{}", name)
    raise did_you_mean(name, host.backbones, "backbone (or a directory / hub id)")


def _build(source: _Source, device: str, dtype: str) -> Backbone:
    torch_device, torch_dtype = torch.device(device), DTYPES[dtype]
    if source.factory is not None:
        return resolve(source.factory)(device=torch_device, dtype=torch_dtype, name=source.name,
                                       **json.loads(source.options))
    return load_pretrained(str(source.path), torch_device, torch_dtype)


def _private_copy(backbone: Backbone) -> Backbone:
    """Own copies of the modules with weights; tokenizer and scheduler hold none, so are shared."""
    return dataclasses.replace(backbone, **{part: copy.deepcopy(getattr(backbone, part))
                                            for part in backbone.weighted_components})


_SHARED: OrderedDict[tuple[_Source, str, str], Backbone] = OrderedDict()
SHARED_BACKBONES = 2  # how many shared backbones a process keeps


def load_backbone(name: str, device: str = "auto", dtype: Dtype = "fp32", private: bool = False,
                  *, host: PluginHost) -> Backbone:
    """A backbone by registered name (in ``host``), directory or hub id.

    Shared per process by default, because several methods (and every cell of a grid) use one
    frozen backbone. Methods that change weights (training, LoRA) ask for a ``private`` copy:
    a deep copy of the shared one when it is loaded already (loading from disk again costs
    seconds: a report of seven methods on one backbone spent 8 s on it), else a load of its own.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    dtype = next(n for n, d in DTYPES.items() if d == torch_dtype)  # "auto" resolved: one cache key
    key = (_source(host, name), str(torch_device), dtype)
    if key in _SHARED:
        _SHARED.move_to_end(key)
        return _private_copy(_SHARED[key]) if private else _SHARED[key]
    if private:
        return _build(*key)
    backbone = _SHARED[key] = _build(*key)
    while len(_SHARED) > SHARED_BACKBONES:
        _SHARED.popitem(last=False)
    return backbone
