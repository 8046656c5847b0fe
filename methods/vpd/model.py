"""VPD: a Stable Diffusion UNet as the image backbone of a referring segmenter.

Image -> VAE latent (no noise by default; VPD feeds t=1) -> UNet conditioned on the expression's
text embedding (through a text adapter). The UNet's decoder features at four scales, with the
head-averaged cross-attention maps (one channel per token) concatenated at chosen scales, go to a
top-down decoder that predicts 2-class logits at latent resolution, upsampled to the input.

Variants: ``vpd`` trains the UNet (adapter on); ``f_vpd`` freezes the UNet and drops the adapter
(seed 000); ``lora_vpd`` freezes the UNet and trains LoRA on the cross-attention Q/K/V.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.vpd.decoder import TextAdapter, TopDownDecoder
from refbench import checkpoint as ckpt
from refbench.data.masks import decode
from refbench.diffusion.attention import capture_attention
from refbench.diffusion.backbone import load_backbone
from refbench.diffusion.features import capture_decoder_features
from refbench.diffusion.latents import latents_and_noise
from refbench.diffusion.prompts import encode
from refbench.errors import UserError
from refbench.method import Batch, Prediction
from refbench.plugins import PluginHost

REFERENCE_LATENT = 64  # attention resolutions are given for SD 1.5 at 512 (latent 64)
# checkpoints trained by refbench and shipped with it: <method>-<backbone>.safetensors (+ .json)
SHIPPED_DIR = Path(__file__).parent / "checkpoints"
SHIPPED = "shipped"


@dataclass(frozen=True)
class VPDConfig:
    backbone: str = "sd15"
    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    # a safetensors file written by refbench train, or "shipped": the one refbench ships for
    # this method and backbone (see SHIPPED_DIR)
    checkpoint: str | None = None
    image_size: int = 0  # 0: the backbone's native input size
    # cross-attention maps fed to the decoder, at these resolutions of a 512 input (latent 64),
    # scaled for other sizes: (16, 32) as VPD, or (16, 32, 64)
    attn_resolutions: tuple[int, ...] = (16, 32)
    upsample_attn: bool = False  # upsample every map to the finest scale before the decoder
    attn_grad: bool = True  # VPD's code detaches the maps (a checkpointing side effect)
    train_timestep: int = 1
    eval_timestep: int = 1
    noise: bool = False  # noise the latent to the timestep with the sample's seed
    decoder_width: int = 512
    class_weights: tuple[float, ...] = (0.9, 1.1)

    def validate(self) -> None:
        if any(r not in (8, 16, 32, 64) for r in self.attn_resolutions):
            raise ValueError("attn_resolutions take values among 8, 16, 32, 64")
        for name in ("train_timestep", "eval_timestep"):
            if not 0 <= getattr(self, name) < 1000:
                raise ValueError(f"{name} must be in [0, 1000)")
        if self.decoder_width < 1:
            raise ValueError("decoder_width must be positive")
        if len(self.class_weights) != 2 or min(self.class_weights) <= 0:
            raise ValueError("class_weights takes two positive numbers (background, object)")
        if self.image_size < 0 or self.image_size % 8:
            raise ValueError("image_size must be 0 (native) or a positive multiple of 8")


@dataclass(frozen=True)
class LoRAVPDConfig(VPDConfig):
    lora_rank: int = 8
    lora_alpha: float = 8.0

    def validate(self) -> None:
        super().validate()
        if self.lora_rank < 1:
            raise ValueError("lora_rank must be at least 1")


class VPDNet(nn.Module):
    """The trainable network: backbone (private copy), optional adapter and LoRA, decoder."""

    def __init__(self, config: VPDConfig, adapter: bool, unet_trainable: bool, lora: bool,
                 host: PluginHost):
        super().__init__()
        self.config = config
        self.backbone = load_backbone(config.backbone, config.device, config.dtype, private=True,
                                      host=host)
        bb = self.backbone
        self.size = config.image_size or bb.image_size
        for part in (bb.vae, bb.text_encoder, bb.unet):
            part.requires_grad_(False)
        if unet_trainable:
            bb.unet.requires_grad_(True)
            # the UNet's output head does not feed the decoder: train nothing that gets no
            # gradient (DDP would wait forever for it)
            for head in (bb.unet.conv_norm_out, bb.unet.conv_out):
                if head is not None:
                    head.requires_grad_(False)
        self.lora = lora
        if lora:
            from peft import LoraConfig

            bb.unet.add_adapter(LoraConfig(
                r=config.lora_rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                target_modules=["attn2.to_q", "attn2.to_k", "attn2.to_v"]))
        # registered as submodules so .train()/.eval() and parameter counts see every part
        self.unet, self.vae, self.text_encoder = bb.unet, bb.vae, bb.text_encoder
        self.unet_needs_grad = unet_trainable or lora or adapter
        width = bb.text_encoder.config.hidden_size
        self.adapter = TextAdapter(width) if adapter else None
        latent = self.size // bb.vae_scale_factor
        self.levels = [latent // 2 ** k for k in reversed(range(len(bb.unet.up_blocks)))]
        self.attn_at = sorted({max(1, r * latent // REFERENCE_LATENT) for r in config.attn_resolutions})
        missing = [r for r in self.attn_at if r not in self.levels]
        if missing:
            raise UserError(f"attention resolutions {missing} are not UNet scales {self.levels} "
                            f"for image_size {self.size}")
        tokens = bb.max_tokens
        channels = list(reversed(bb.unet.config.block_out_channels))
        for r in self.attn_at:
            channels[self.levels.index(self._attn_level(r))] += tokens
        self.decoder = TopDownDecoder(channels, config.decoder_width)
        self.decoder.to(bb.device, bb.dtype)
        if self.adapter is not None:
            self.adapter.to(bb.device, bb.dtype)
        self.register_buffer("class_weights", torch.tensor(config.class_weights, dtype=torch.float32))

    def _attn_level(self, resolution: int) -> int:
        return self.levels[-1] if self.config.upsample_attn else resolution

    # -- forward ---------------------------------------------------------------------------
    def logits(self, batch: Batch) -> torch.Tensor:
        """2-class logits at latent resolution, (B, 2, L, L)."""
        bb, config = self.backbone, self.config
        latents, noise = latents_and_noise(bb, batch.images, batch.seeds, self.size)
        t = config.train_timestep if self.training else config.eval_timestep
        timestep = torch.full((len(batch),), t, dtype=torch.long, device=latents.device)
        if config.noise:
            latents = bb.scheduler.add_noise(latents, noise, timestep)
        with torch.no_grad():
            context = encode(bb.text_encoder, bb.tokenizer, [s.expression for s in batch.samples])
        if self.adapter is not None:
            context = self.adapter(context)
        grad = torch.is_grad_enabled() and self.unet_needs_grad
        with torch.set_grad_enabled(grad), \
                capture_attention(bb.unet, set(self.attn_at), None,
                                  keep_graph=grad and config.attn_grad) as record, \
                capture_decoder_features(bb.unet) as features:
            bb.unet(latents, timestep, encoder_hidden_states=context)
        inputs = list(features)
        for r in self.attn_at:
            maps = record.cross_maps(r).to(inputs[0].dtype)
            level = self.levels.index(self._attn_level(r))
            if maps.shape[-1] != self.levels[level]:
                maps = F.interpolate(maps, size=inputs[level].shape[-2:], mode="bilinear",
                                     align_corners=False)
            inputs[level] = torch.cat([inputs[level], maps], dim=1)
        return self.decoder(inputs)

    def forward(self, batch: Batch) -> torch.Tensor:
        """The training loss: what a DistributedDataParallel wrapper calls."""
        return self.loss(batch)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Class-weighted cross-entropy at the network's input size."""
        logits = F.interpolate(self.logits(batch), size=(self.size, self.size), mode="bilinear",
                               align_corners=False)
        targets = torch.stack([
            F.interpolate(torch.from_numpy(decode(s.gt)).float()[None, None], size=(self.size, self.size),
                          mode="nearest")[0, 0] for s in batch.samples]).long().to(logits.device)
        return F.cross_entropy(logits.float(), targets, weight=self.class_weights)

    def train(self, mode: bool = True) -> VPDNet:
        """Frozen parts stay in eval mode (no dropout, as in VPD)."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        was_training = self.training
        self.eval()
        probs = self.logits(batch).float().softmax(dim=1)[:, 1]
        self.train(was_training)
        out = []
        for sample, prob in zip(batch.samples, probs):
            resized = F.interpolate(prob[None, None], size=(sample.height, sample.width),
                                    mode="bilinear", align_corners=False)[0, 0]
            out.append(Prediction(scores=resized.clamp(0, 1).cpu().numpy().astype(np.float32)))
        return out

    # -- what training touches ------------------------------------------------------------
    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def parameter_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: no decay on biases, norms and other vectors (gamma included)."""
        decay, no_decay = [], []
        for _, p in self.trainable_named_parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Everything training changes: trainable parameters plus the decoder's BN statistics."""
        trainable = {n for n, _ in self.trainable_named_parameters()}
        state = self.state_dict()
        return {k: v for k, v in state.items() if k in trainable or k.startswith("decoder.")}

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = set(self.checkpoint_state())
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors))[:3], sorted(set(tensors) - expected)[:3]
            raise UserError(f"checkpoint does not fit this network (missing {missing}, "
                            f"unexpected {extra}): was it trained with another variant or config?")
        self.load_state_dict(tensors, strict=False)


def shipped_checkpoint(method: str, backbone: str) -> Path:
    """The checkpoint refbench ships for ``method`` on ``backbone``, or a one-line error."""
    path = SHIPPED_DIR / f"{method}-{Path(backbone).name}.safetensors"
    if not path.is_file():
        shipped = sorted(p.stem for p in SHIPPED_DIR.glob("*.safetensors"))
        raise UserError(f"no shipped {method} checkpoint for backbone {backbone!r} (shipped: "
                        f"{', '.join(shipped) or 'none'}): train one with 'refbench train --method "
                        f"{method}' and pass --set {method}.checkpoint=PATH")
    return path


# config fields that shape the network: a checkpoint only fits the values it was trained with
ARCHITECTURE = ("decoder_width", "attn_resolutions", "upsample_attn", "lora_rank")


def _check_architecture(method: str, config: VPDConfig, trained: dict[str, Any], path: str) -> None:
    """One line naming the --set values a checkpoint needs, instead of a shape-mismatch traceback."""
    wrong = [(key, trained[key]) for key in ARCHITECTURE
             if key in trained and hasattr(config, key)
             and _plain(getattr(config, key)) != _plain(trained[key])]
    if wrong:
        fixes = " ".join(f"--set {method}.{key}={_cli_value(value)}" for key, value in wrong)
        raise UserError(f"checkpoint {path} was trained with other network settings: pass {fixes}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _cli_value(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


class VPD:
    """The refbench method: a VPDNet with a trained checkpoint loaded."""

    Config: ClassVar[type] = VPDConfig
    method_name: ClassVar[str] = "vpd"
    adapter: ClassVar[bool] = True
    unet_trainable: ClassVar[bool] = True
    lora: ClassVar[bool] = False

    @classmethod
    def network(cls, config: VPDConfig, host: PluginHost) -> VPDNet:
        return VPDNet(config, cls.adapter, cls.unet_trainable, cls.lora, host)

    def __init__(self, config: VPDConfig, *, host: PluginHost):
        if not config.checkpoint:
            raise UserError(
                f"{self.method_name} is trainable and has no checkpoint: train one with "
                f"'refbench train --method {self.method_name} ...' and pass "
                f"--set {self.method_name}.checkpoint=PATH (no random decoder is ever evaluated)")
        if config.checkpoint == SHIPPED:
            config = dataclasses.replace(config, checkpoint=str(shipped_checkpoint(
                self.method_name, config.backbone)))
        tensors, meta = ckpt.load(config.checkpoint)
        trained_for = meta.get("method")
        if trained_for and trained_for != self.method_name:
            raise UserError(f"checkpoint {config.checkpoint} was trained for {trained_for}, "
                            f"not {self.method_name}")
        _check_architecture(self.method_name, config, meta.get("config", {}), config.checkpoint)
        self.config = config
        self.net = self.network(config, host)
        trained_on, now = meta.get("backbone"), self.net.backbone.fingerprint
        if trained_on and trained_on != now:  # the backbone's weights changed since training
            raise UserError(f"checkpoint {config.checkpoint} was trained on other weights of backbone "
                            f"{config.backbone!r} (fingerprint {trained_on}, now {now}): retrain it "
                            f"with 'refbench train --method {self.method_name} --set "
                            f"{self.method_name}.backbone={config.backbone} ...'")
        self.net.load_checkpoint_state(tensors)
        self.net.eval()
        self._hash = ckpt.checkpoint_hash(config.checkpoint)

    def weights_fingerprint(self) -> str:
        return f"{self.net.backbone.fingerprint}+{self._hash}"

    def predict(self, batch: Batch) -> list[Prediction]:
        return self.net.predict(batch)


class FrozenVPD(VPD):
    method_name = "f_vpd"
    adapter = False
    unet_trainable = False


class LoRAVPD(VPD):
    Config = LoRAVPDConfig
    method_name = "lora_vpd"
    unet_trainable = False
    lora = True
