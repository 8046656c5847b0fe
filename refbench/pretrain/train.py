"""``refbench pretrain-shapes``: train the miniature model, autoencoder first, then text + UNet.

Stage 1 trains the AutoencoderKL on scene pixels (MSE plus a small KL term) and sets its
``scaling_factor`` so scaled latents have unit spread, as SD's 0.18215 does. Stage 2 freezes it
and trains the text encoder and UNet jointly with the usual noise-prediction loss under SD's
scheduler; a tenth of the captions are dropped to "" so the unconditioned embedding (used by
classifier-free guidance and by unconditioned-embedding averaging) is a trained one. With
``grounding_weight`` the grounding loss (``grounding.py``: each word naming an object attends to
that object) is added to the noise-prediction loss; ``init_from`` runs this stage again on a
finished model (a grounding phase on top of a trained model, for instance).

Every ``save_every`` steps the model directory is rewritten and the optimiser state saved, so a
killed run resumes from its last save and a long run can be evaluated while it trains (a
resumed run is not bit-identical to an uninterrupted one: the scene stream starts again). The loss
curve is ``loss.csv`` (stage, step, loss averaged over the logging window, seconds).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from refbench.diffusion.attention import capture_attention
from refbench.diffusion.backbone import Backbone, load_pretrained
from refbench.diffusion.prompts import tokenize
from refbench.errors import UserError
from refbench.pretrain.config import PretrainConfig
from refbench.pretrain.model import IMAGE_SIZE, SHAPES, build_untrained
from refbench.pretrain.grounding import grounding_loss, word_tokens
from refbench.pretrain.scenes import ScenePool

STATE = "pretrain_state.pt"




def _schedule(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class _Log:
    """loss.csv: the training loss (noise prediction, or reconstruction for the autoencoder)
    and the grounding loss (empty where it is off), each averaged over the logging window."""

    def __init__(self, path: Path, echo: Callable[[str], None]):
        self.path, self.echo = path, echo
        if not path.exists():
            path.write_text("stage,step,loss,seconds,grounding\n")
        self.window: list[float] = []
        self.grounding: list[float] = []

    def add(self, stage: str, step: int, total: int, loss: float, seconds: float, every: int,
            grounding: float | None = None) -> None:
        self.window.append(loss)
        if grounding is not None:
            self.grounding.append(grounding)
        if (step + 1) % every == 0 or step + 1 == total:
            mean = sum(self.window) / len(self.window)
            ground = f"{sum(self.grounding) / len(self.grounding):.6f}" if self.grounding else ""
            with open(self.path, "a") as handle:
                handle.write(f"{stage},{step + 1},{mean:.6f},{seconds:.1f},{ground}\n")
            self.echo(f"{stage} step {step + 1}: loss {mean:.4f}"
                      + (f", grounding {ground}" if ground else "") + f" ({seconds:.0f} s)")
            self.window, self.grounding = [], []


def _train_autoencoder(backbone: Backbone, pool: ScenePool, config: PretrainConfig, log: _Log,
                       start: int, state: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> None:
    vae = backbone.vae.train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    if "vae_optimiser" in state:
        optimiser.load_state_dict(state["vae_optimiser"])
    began = time.time() - state.get("vae_seconds", 0.0)
    for step in range(start, config.vae_steps):
        for group in optimiser.param_groups:
            group["lr"] = config.vae_lr * _schedule(step, 50, config.vae_steps)
        pool.refresh(config.refresh)
        _, pixels, _ = pool.batch(config.vae_batch_size)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, pixels) + config.kl_weight * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimiser.step()
        if (step + 1) % config.save_every == 0 or step + 1 == config.vae_steps:
            save({"stage": "autoencoder", "step": step + 1, "vae_optimiser": optimiser.state_dict(),
                  "vae_seconds": time.time() - began})
        log.add("autoencoder", step, config.vae_steps, float(loss.detach()), time.time() - began,
                config.log_every)
    vae.eval()


@torch.no_grad()
def _set_scaling_factor(backbone: Backbone, pool: ScenePool) -> float:
    means = torch.cat([backbone.vae.encode(pool.pixels[i:i + 256]).latent_dist.mean
                       for i in range(0, min(len(pool.captions), 2048), 256)])
    factor = float(1.0 / means.std())
    backbone.vae.register_to_config(scaling_factor=factor)
    return factor


@torch.no_grad()
def _latents(backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
    return backbone.vae.encode(pixels).latent_dist.mean * backbone.vae.config.scaling_factor


def _weighted_mse(predicted: torch.Tensor, target: torch.Tensor, alphas_cumprod: torch.Tensor,
                  snr_gamma: float) -> torch.Tensor:
    """Noise- (or velocity-) prediction MSE; with ``snr_gamma`` each sample weighs min(SNR, gamma) / SNR, which
    stops the nearly clean timesteps (where the caption tells the model nothing) from dominating
    the gradient."""
    per_sample = ((predicted - target) ** 2).flatten(1).mean(1)
    if not snr_gamma:
        return per_sample.mean()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return (per_sample * snr.clamp(max=snr_gamma) / snr).mean()


def _train_denoiser(backbone: Backbone, pool: ScenePool, config: PretrainConfig, log: _Log,
                    start: int, state: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> None:
    unet, text_encoder = backbone.unet.train(), backbone.text_encoder.train()
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=1e-2)
    if "optimiser" in state:
        optimiser.load_state_dict(state["optimiser"])
    scheduler = backbone.scheduler
    latents = torch.cat([_latents(backbone, pool.pixels[i:i + 256]) for i in range(0, len(pool.captions), 256)])
    began = time.time() - state.get("seconds", 0.0)
    for step in range(start, config.steps):
        for group in optimiser.param_groups:
            group["lr"] = config.lr * _schedule(step, config.warmup, config.steps)
        fresh = pool.refresh(config.refresh)
        latents[fresh] = _latents(backbone, pool.pixels[fresh])
        indices, _, drawn = pool.batch(config.batch_size)
        drop = (torch.rand(len(drawn)) < config.caption_dropout).tolist()
        captions = [None if d else c for c, d in zip(drawn, drop)]
        clean = latents[indices]
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(indices),))
        noisy = scheduler.add_noise(clean, noise, timesteps)
        ids = tokenize(backbone.tokenizer, ["" if c is None else c.text for c in captions], clean.device)
        context = text_encoder(ids)[0]
        grounding = None
        if config.grounding_weight:
            weights, word_masks, valid = word_tokens(backbone.tokenizer, captions,
                                                     [pool.masks[i] for i in indices], ids.shape[1])
            # Near t=1000 the latent is noise and no attention can find the object: those
            # samples only add noise to the grounding gradient.
            valid = valid * (timesteps < config.grounding_max_t).float()[:, None]
            with capture_attention(unet, keep_graph=True) as record:
                predicted = unet(noisy, timesteps, encoder_hidden_states=context).sample
            grounding = grounding_loss(record, weights, word_masks, valid)
        else:
            predicted = unet(noisy, timesteps, encoder_hidden_states=context).sample
        # the denoiser's target: the noise, or (a v-prediction model, SD 2.x at 768) the velocity
        target = (scheduler.get_velocity(clean, noise, timesteps)
                  if backbone.prediction_type == "v_prediction" else noise)
        loss = _weighted_mse(predicted, target, scheduler.alphas_cumprod[timesteps], config.snr_gamma)
        total = loss if grounding is None else loss + config.grounding_weight * grounding
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            save({"stage": "denoiser", "step": step + 1, "optimiser": optimiser.state_dict(),
                  "seconds": time.time() - began})
        log.add("denoiser", step, config.steps, float(loss.detach()), time.time() - began,
                config.log_every, None if grounding is None else float(grounding.detach()))
    unet.eval(), text_encoder.eval()


def pretrain(out: Path, config: PretrainConfig, echo: Callable[[str], None] = print) -> Path:
    """Train (or resume training) the miniature model into ``out`` (diffusers layout)."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {}
    summary = out / "training.json"
    if not (out / STATE).exists() and summary.exists():
        done = json.loads(summary.read_text())
        # settings added since that run was made count at their defaults
        recorded = {**asdict(PretrainConfig()), **done.get("config", {})}
        if done.get("done") and _comparable_dict(recorded) == _comparable(config):
            echo(f"{out} already holds a model trained with these settings")
            return out
    if (out / STATE).exists():
        try:
            state = torch.load(out / STATE, weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable state is the same user error
            raise UserError(f"{out / STATE} cannot be read ({type(error).__name__}): delete it to "
                            f"start over, or pick another --out") from None
        if state.get("config") != _comparable(config):
            raise UserError(f"{out} holds a run with other settings: pick another --out, or rerun "
                            f"with the settings in {out / 'training.json'}")
    torch.manual_seed(config.seed)
    if state:
        backbone = load_pretrained(str(out), torch.device("cpu"), torch.float32, "shapes")
    elif config.init_from:  # a second denoiser phase: the autoencoder and its scaling are kept
        backbone = load_pretrained(config.init_from, torch.device("cpu"), torch.float32, "shapes")
        state = {"stage": "denoiser", "step": 0}
        for curve in Path(config.init_from).glob("*loss.csv"):  # earlier phases' curves travel along
            shutil.copyfile(curve, out / f"init_{curve.name}")
    else:
        backbone = build_untrained(config.seed)
    echo(f"drawing a pool of {config.pool} scenes")
    pool = ScenePool(IMAGE_SIZE, config.pool, config.seed + 1, backbone.unet.config.sample_size,
                     config.colour_rate)
    log = _Log(out / "loss.csv", echo)

    def save(progress: dict[str, Any]) -> None:
        backbone.save(out)
        state.update({"config": _comparable(config), **progress})
        torch.save(state, out / STATE)
        _write_summary(out, config, state)

    stage, step = state.get("stage"), int(state.get("step", 0))
    if stage in (None, "autoencoder") and not (stage == "autoencoder" and step >= config.vae_steps):
        _train_autoencoder(backbone, pool, config, log, step if stage else 0, state, save)
    if stage != "denoiser":
        factor = _set_scaling_factor(backbone, pool)
        echo(f"latent scaling factor {factor:.4f}")
        step = 0
    _train_denoiser(backbone, pool, config, log, step if stage == "denoiser" else 0, state, save)
    (out / STATE).unlink(missing_ok=True)
    _write_summary(out, config, state, done=True)
    return out


def _comparable(config: PretrainConfig) -> dict[str, Any]:
    return _comparable_dict(asdict(config))


def _comparable_dict(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that change the model (not how often it is saved or logged)."""
    return {k: v for k, v in config.items() if k not in ("threads", "save_every", "log_every")}


def _write_summary(out: Path, config: PretrainConfig, state: dict[str, Any], done: bool = False) -> None:
    summary = {"architecture": SHAPES, "config": asdict(config), "stage": state.get("stage"),
               "step": state.get("step"), "denoiser_seconds": round(state.get("seconds", 0.0), 1),
               "autoencoder_seconds": round(state.get("vae_seconds", 0.0), 1), "done": done,
               "threads": torch.get_num_threads()}
    init = Path(config.init_from) / "training.json" if config.init_from else None
    if init is not None and init.is_file():  # the record of the phase this one continues
        summary["init"] = json.loads(init.read_text())
    (out / "training.json").write_text(json.dumps(summary, indent=2, default=list))
