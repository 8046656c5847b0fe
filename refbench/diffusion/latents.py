"""Image latents and per-sample noise, computed once and shared.

Encoding an image with the VAE and drawing its noise depend on the image, the backbone, the
input size, the seed and how the latent is taken (the posterior's mean or a sample of it,
scaled by the VAE's ``scaling_factor`` or not, the resize antialiased or not), not on a method's
other parameters. A process-wide LRU keyed by exactly those lets every cell of a grid (and
every method on one backbone) reuse them; it is bounded by bytes as well as entries, so it holds
a whole leaderboard's splits on a small model (a few KB a latent: the methods of a report share
them) and a few thousand latents of Stable Diffusion (128 KB each with the noise). The noise, then the posterior sample's epsilon, are
drawn on the CPU from the sample's own seed, so both are the same on every device and for every
batch size.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from refbench.diffusion.backbone import Backbone

_CACHE: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
CACHE_SIZE = 8192  # entries
CACHE_BYTES = 512 * 2**20
stats = {"hits": 0, "misses": 0}
_held = {"bytes": 0}


def _nbytes(entry: tuple[torch.Tensor, torch.Tensor]) -> int:
    return sum(t.element_size() * t.nelement() for t in entry)


Posterior = Literal["mean", "sample"]
PilFilter = Literal["bilinear", "bicubic"]


def to_pixels(images: Sequence[np.ndarray], size: int, antialias: bool = True,
              pil: bool = False, pil_filter: PilFilter = "bilinear") -> torch.Tensor:
    """RGB uint8 images squashed to size x size (bilinear: torch's, antialiased or not, or PIL's
    as torchvision's Resize does it; ``pil_filter="bicubic"``: PIL's bicubic, the default of
    ``PIL.Image.resize``), scaled to [-1, 1]: (B, 3, size, size)."""
    out = []
    for image in images:
        if pil:
            from PIL import Image

            resample = Image.Resampling.BICUBIC if pil_filter == "bicubic" else Image.Resampling.BILINEAR
            resized = np.array(Image.fromarray(image).resize((size, size), resample))
            x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].float() / 255.0
        else:
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=antialias)
        out.append(2 * x - 1)
    return torch.cat(out)


def _image_key(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).hexdigest()


def latents_and_noise(backbone: Backbone, images: Sequence[np.ndarray], seeds: Sequence[int],
                      size: int, posterior: Posterior = "mean", antialias: bool = True,
                      scaled: bool = True, pil: bool = False, pil_filter: PilFilter = "bilinear",
                      noise_first: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE latents and seeded noise for each image. ``posterior``: the posterior's mean, or a
    sample mean + std * eps (``latent_dist.sample()``, eps from the seed); ``scaled``: minus the
    VAE's ``shift_factor`` (SD3, Flux; none for SD 1.x, 2.x, XL) and times its ``scaling_factor``
    (0.18215 for SD 1.x), as the denoiser was trained on. ``noise_first``: the seed's generator
    draws the noise, then eps; False: eps, then the noise (as diffusers' img2img
    ``prepare_latents`` draws them: the posterior sample before the noise)."""
    keys = [(backbone.fingerprint, str(backbone.device), str(backbone.dtype), size, seed,
             posterior, antialias, scaled, pil, pil_filter, noise_first, _image_key(image))
            for image, seed in zip(images, seeds)]
    # this batch's entries are held here, so evicting old ones can never drop one of them
    found: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, key in enumerate(keys):
        if key in _CACHE:
            _CACHE.move_to_end(key)
            found[i] = _CACHE[key]
    missing = [i for i in range(len(keys)) if i not in found]
    if missing:
        pixels = to_pixels([images[i] for i in missing], size, antialias, pil, pil_filter).to(
            backbone.device, backbone.dtype)
        with torch.no_grad():
            dist = backbone.vae.encode(pixels).latent_dist
        scale = backbone.vae.config.scaling_factor if scaled else 1.0
        shift = (getattr(backbone.vae.config, "shift_factor", None) or 0.0) if scaled else 0.0
        for row, i in enumerate(missing):
            generator = torch.Generator("cpu").manual_seed(int(seeds[i]))
            if noise_first:
                noise = torch.randn(dist.mean.shape[1:], generator=generator)
            latent = dist.mean[row]
            if posterior == "sample":
                eps = torch.randn(dist.mean.shape[1:], generator=generator)
                latent = latent + dist.std[row] * eps.to(latent.device, latent.dtype)
            if not noise_first:
                noise = torch.randn(dist.mean.shape[1:], generator=generator)
            if keys[i] in _CACHE:  # the same image and seed twice in one batch
                _held["bytes"] -= _nbytes(_CACHE[keys[i]])
            shifted = latent - shift if shift else latent
            found[i] = _CACHE[keys[i]] = ((shifted * scale).cpu(), noise)
            _held["bytes"] += _nbytes(found[i])
    while len(_CACHE) > CACHE_SIZE or (_held["bytes"] > CACHE_BYTES and len(_CACHE) > 1):
        _held["bytes"] -= _nbytes(_CACHE.popitem(last=False)[1])
    stats["misses"] += len(missing)
    stats["hits"] += len(keys) - len(missing)
    latents = torch.stack([found[i][0] for i in range(len(keys))]).to(backbone.device, backbone.dtype)
    noise = torch.stack([found[i][1] for i in range(len(keys))]).to(backbone.device, backbone.dtype)
    return latents, noise


def clear_cache() -> None:
    _CACHE.clear()
    _held["bytes"] = 0
    stats.update(hits=0, misses=0)
