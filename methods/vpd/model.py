"""VPD for referring segmentation ("Unleashing Text-to-Image Diffusion Models for Visual
Perception", Zhao et al., ICCV 2023; code: github.com/wl-zhao/VPD, refer/ and vpd/), its network
exactly, and the frozen and LoRA variants of "Referring Image Segmentation via Text-to-Image
Diffusion Models" (the F-VPD / LoRA-VPD project page).

As VPD's ``VPDRefer`` computes it: the image's VAE latent is the posterior mode, not scaled by
the VAE's scaling factor, at timestep 1 with no noise. The expression is tokenized to exactly T
tokens (``token_length``: 40 for RefCOCO and RefCOCO+, 77 for G-Ref; padding included), encoded
by the backbone's CLIP text encoder without an attention mask (its last hidden state), and
passed through the text adapter c + gamma * MLP(c). One UNet forward gives the hidden state
after the second block of each coarse decoder level and after the last block (ldm's output
blocks 1, 4, 7, 11 for SD 1.5: 8x8x1280, 16x16x1280, 32x32x640, 64x64x320); the head-averaged
cross-attention probabilities of every down and up cross-attention layer (not the mid block) at
latent/4 and latent/2 (16 and 32 at 512), averaged over layers, are concatenated to the features
of their resolution as T channels. SimpleDecoding fuses them (hidden width = the coarsest
feature's // 2, bilinear with align_corners=True) into 2 logits at latent resolution, upsampled
bilinearly (align_corners=True) to the output size; the score is the object's softmax
probability (>= 0.5 is VPD's argmax).

Variants: ``vpd`` trains the UNet (adapter on); ``f_vpd`` freezes the UNet and drops the adapter;
``lora_vpd`` freezes the UNet and trains LoRA on the cross-attention Q/K/V (adapter on).
Checkpoints: refbench's own (``.safetensors`` + ``.json``), or VPD's released ``.pth``
(``methods/vpd/ldm.py``), whose UNet and VAE encoder replace the backbone's.
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

from methods.vpd.decoder import SimpleDecoding, TextAdapter
from refbench import checkpoint as ckpt
from refbench.data.masks import decode
from refbench.diffusion.attention import AttentionCapture
from refbench.diffusion.backbone import load_backbone
from refbench.diffusion.denoisers import Conditioning, conditioning, denoise, noised
from refbench.diffusion.families import DIT_FAMILIES, FAMILIES, UNET_FAMILIES, require_family
from refbench.diffusion.features import capture_level_features
from refbench.diffusion.latents import latents_and_noise
from refbench.diffusion.prompts import TokenSegment
from refbench.errors import UserError
from refbench.method import Batch, Prediction
from refbench.plugins import PluginHost

# checkpoints trained by refbench and shipped with it: <method>-<backbone>.safetensors (+ .json)
SHIPPED_DIR = Path(__file__).parent / "checkpoints"
SHIPPED = "shipped"
GAMMA_INIT = 1e-4
ATTENTION_FROM = ("down_blocks", "up_blocks")  # VPD's attn_selector "up_cross+down_cross"
# why VPD and LoRA-VPD run on the UNet families only (F-VPD runs on every family)
FAMILY_REASON = ("it trains a UNet, or LoRA on its cross-attention, with VPD's text adapter on "
                 "the UNet's CLIP context; on an MM-DiT refbench defines only the frozen f_vpd")


@dataclass(frozen=True)
class VPDConfig:
    backbone: str = "sd15"
    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    # refbench's safetensors checkpoint, VPD's released .pth, or "shipped": the one refbench
    # ships for this method and backbone (see SHIPPED_DIR)
    checkpoint: str | None = None
    image_size: int = 0  # 0: the backbone's native input size (512 for SD 1.5)
    token_length: int = 40  # T: 40 for RefCOCO and RefCOCO+, 77 for G-Ref, as VPD trains them
    # VPD's maps carry no gradient (ldm's checkpointed transformer blocks run without one)
    attn_grad: bool = False
    train_timestep: int = 1
    eval_timestep: int = 1
    noise: bool = False  # noise the latent to the timestep with the sample's seed
    class_weights: tuple[float, ...] = (0.9, 1.1)
    gradient_checkpointing: bool = False  # recompute the UNet's activations in backward

    def validate(self) -> None:
        for name in ("train_timestep", "eval_timestep"):
            if not 0 <= getattr(self, name) < 1000:
                raise ValueError(f"{name} must be in [0, 1000)")
        if len(self.class_weights) != 2 or min(self.class_weights) <= 0:
            raise ValueError("class_weights takes two positive numbers (background, object)")
        if self.image_size < 0 or self.image_size % 8:
            raise ValueError("image_size must be 0 (native) or a positive multiple of 8")
        if not 3 <= self.token_length <= 77:
            raise ValueError(f"token_length must be from 3 to 77 (CLIP's context), got {self.token_length}")


@dataclass(frozen=True)
class LoRAVPDConfig(VPDConfig):
    lora_rank: int = 8
    lora_alpha: float = 8.0

    def validate(self) -> None:
        super().validate()
        if self.lora_rank < 1:
            raise ValueError("lora_rank must be at least 1")


class VPDNet(nn.Module):
    """The network: backbone (private copy), text adapter and gamma, LoRA, SimpleDecoding."""

    def __init__(self, config: VPDConfig, adapter: bool, unet_trainable: bool, lora: bool,
                 host: PluginHost, method: str = "vpd"):
        super().__init__()
        self.config = config
        self.backbone = load_backbone(config.backbone, config.device, config.dtype, private=True,
                                      host=host)
        bb = self.backbone
        require_family(method, bb.family, supported_families(adapter, unet_trainable, lora), FAMILY_REASON)
        self.size = config.image_size or bb.image_size
        for part in bb.modules:
            part.requires_grad_(False)
        self.latent = self.size // bb.vae_scale_factor
        self.unet_needs_grad = unet_trainable or lora or adapter
        self.lora, self.text_adapter, self.gamma, self.unet = lora, None, None, None
        # the other text encoders (SDXL, SD3, Flux): registered so that counts and eval() see them
        self.more_text_encoders = nn.ModuleList(
            [getattr(bb, part) for part in ("text_encoder_2", "text_encoder_3") if getattr(bb, part) is not None])
        self.dit = None
        if bb.family in DIT_FAMILIES:  # frozen, no adapter (F-VPD): see methods/vpd/dit.py
            from methods.vpd.dit import DiTFeatures

            self.vae, self.text_encoder, self.transformer = bb.vae, bb.text_encoder, bb.transformer
            self.dit = DiTFeatures(bb, self.latent, _text_tokens(bb, config.token_length))
            self.resolutions, self.attn_at = self.dit.resolutions, self.dit.attn_at
            self.classifier = SimpleDecoding(self.dit.dims).to(bb.device, bb.dtype)
            self.register_buffer("class_weights", torch.tensor(config.class_weights, dtype=torch.float32))
            return
        if unet_trainable:
            bb.unet.requires_grad_(True)
            # the UNet's output head does not feed the decoder: train nothing that gets no
            # gradient (DDP would wait forever for it)
            for head in (bb.unet.conv_norm_out, bb.unet.conv_out):
                if head is not None:
                    head.requires_grad_(False)
        if lora:
            from peft import LoraConfig

            bb.unet.add_adapter(LoraConfig(
                r=config.lora_rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                target_modules=["attn2.to_q", "attn2.to_k", "attn2.to_v"]))
        if config.gradient_checkpointing:
            bb.unet.enable_gradient_checkpointing()
        # registered as submodules so .train()/.eval() and parameter counts see every part
        self.unet, self.vae, self.text_encoder = bb.unet, bb.vae, bb.text_encoder
        width = bb.unet.config.cross_attention_dim  # the context's width (SDXL: both CLIPs')
        self.text_adapter = TextAdapter(width) if adapter else None
        self.gamma = nn.Parameter(torch.full((width,), GAMMA_INIT)) if adapter else None
        levels = len(bb.unet.up_blocks)
        # feature resolutions, fine to coarse, and where the maps go (latent/2 and latent/4)
        self.resolutions = [self.latent // 2 ** k for k in range(levels)]
        attended = {self.latent // 2 ** i for i, block in enumerate(bb.unet.down_blocks)
                    if getattr(block, "attentions", None)}
        attended |= {self.latent // 2 ** (levels - 1 - i) for i, block in enumerate(bb.unet.up_blocks)
                     if getattr(block, "attentions", None)}
        self.attn_at = [r for r in (self.latent // 2, self.latent // 4)
                        if r in self.resolutions[1:] and r in attended]
        widths = self._feature_widths()
        dims = [c + (config.token_length if r in self.attn_at else 0)
                for r, c in zip(self.resolutions, widths)]
        self.classifier = SimpleDecoding(dims)
        # installed for good: a checkpointed backward recomputes attention as the forward did
        self.attention = AttentionCapture(bb.unet, set(self.attn_at), blocks=ATTENTION_FROM)
        for part in (self.classifier, self.text_adapter):
            if part is not None:
                part.to(bb.device, bb.dtype)
        if self.gamma is not None:
            self.gamma.data = self.gamma.data.to(bb.device, bb.dtype)
        self.register_buffer("class_weights", torch.tensor(config.class_weights, dtype=torch.float32))

    def _feature_widths(self) -> list[int]:
        """Channels of the tapped features, fine to coarse (from the UNet's config)."""
        channels = list(self.backbone.unet.config.block_out_channels)
        # up level i of n works at block_out_channels[n - 1 - i]; fine to coarse is the reverse
        return channels[: len(self.resolutions)]

    # -- forward ---------------------------------------------------------------------------
    def context(self, batch: Batch) -> Conditioning:
        """The cross-attention context: T tokens as the family's pipeline encodes them (SD 1.x
        and 2.x: CLIP's last hidden state; SDXL: both CLIPs' penultimate states, and the pooled
        added condition), then the adapter on the tokens."""
        with torch.no_grad():
            context = conditioning(self.backbone, [s.expression for s in batch.samples],
                                   max_length=self.config.token_length)
        if self.text_adapter is not None:
            context = context.replace_tokens(self.text_adapter(context.tokens, self.gamma))
        return context

    def logits(self, batch: Batch) -> torch.Tensor:
        """2-class logits at latent resolution, (B, 2, L, L) (an MM-DiT's: at its grid)."""
        bb, config = self.backbone, self.config
        latents, noise = latents_and_noise(bb, batch.images, batch.seeds, self.size,
                                           posterior="mean", scaled=False, pil=True)
        t = config.train_timestep if self.training else config.eval_timestep
        timestep = torch.full((len(batch),), t, dtype=torch.long, device=latents.device)
        if config.noise:
            latents = noised(bb, latents, noise, timestep)
        context = self.context(batch)
        grad = torch.is_grad_enabled() and self.unet_needs_grad
        if self.dit is not None:
            with torch.no_grad(), self.dit.recording(bb) as (features, record):
                denoise(bb, latents, timestep, context)
            return self.classifier(self.dit.inputs(features, record))
        with torch.set_grad_enabled(grad), \
                self.attention.recording(keep_graph=grad and config.attn_grad) as record, \
                capture_level_features(bb.unet, block=1) as features:
            denoise(bb, latents, timestep, context)
        inputs = list(features)
        for r in self.attn_at:
            level = self.resolutions.index(r)
            inputs[level] = torch.cat([inputs[level], record.cross_maps(r).to(inputs[level].dtype)], dim=1)
        return self.classifier(inputs)

    def forward(self, batch: Batch) -> torch.Tensor:
        """The training loss: what a DistributedDataParallel wrapper calls."""
        return self.loss(batch)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Class-weighted cross-entropy at the input size, the ground truth resized with nearest."""
        logits = F.interpolate(self.logits(batch), size=(self.size, self.size), mode="bilinear",
                               align_corners=True)
        targets = torch.stack([
            F.interpolate(torch.from_numpy(decode(s.gt)).float()[None, None], size=(self.size, self.size),
                          mode="nearest-exact")[0, 0] for s in batch.samples]).long().to(logits.device)
        return F.cross_entropy(logits.float(), targets, weight=self.class_weights)

    def train(self, mode: bool = True) -> VPDNet:
        """Frozen parts stay in eval mode (no dropout, as in VPD)."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        self.more_text_encoders.eval()
        if self.dit is not None:  # F-VPD's frozen transformer
            self.transformer.eval()
        return self

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        was_training = self.training
        self.eval()
        logits = self.logits(batch).float()
        self.train(was_training)
        out = []
        for sample, logit in zip(batch.samples, logits):
            size = batch.output_size(sample)
            resized = F.interpolate(logit[None], size=size, mode="bilinear", align_corners=True)[0]
            prob = resized.softmax(dim=0)[1]
            out.append(Prediction(scores=prob.clamp(0, 1).cpu().numpy().astype(np.float32)))
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
        return {k: v for k, v in state.items() if k in trainable or k.startswith("classifier.")}

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
        expected = self.checkpoint_state()
        if set(tensors) != set(expected):
            missing, extra = sorted(set(expected) - set(tensors))[:3], sorted(set(tensors) - set(expected))[:3]
            raise UserError(f"{where} does not fit this network (missing {missing}, "
                            f"unexpected {extra}): was it trained with another variant or config?")
        for key, value in tensors.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise UserError(f"{where}: {key} has shape {tuple(value.shape)}, this network's is "
                                f"{tuple(expected[key].shape)}: was it trained with another "
                                f"token_length or backbone?")
        self.load_state_dict(tensors, strict=False)


def supported_families(adapter: bool, unet_trainable: bool, lora: bool) -> tuple[str, ...]:
    """Every family for the frozen, adapter-free F-VPD; the UNet families otherwise."""
    return UNET_FAMILIES if adapter or unet_trainable or lora else FAMILIES


def _text_tokens(bb: Any, token_length: int) -> int:
    """How many text tokens the denoiser attends to (the maps' channels) with CLIP at T tokens."""
    from refbench.diffusion.denoisers import token_layout

    layout: tuple[TokenSegment, ...] = token_layout(bb, token_length)
    return sum(segment.length for segment in layout)


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
ARCHITECTURE = ("token_length", "lora_rank", "image_size")


def _check_architecture(method: str, config: VPDConfig, trained: dict[str, Any], path: str) -> None:
    """One line naming the --set values a checkpoint needs, instead of a shape-mismatch traceback."""
    wrong = [(key, trained[key]) for key in ARCHITECTURE
             if key in trained and hasattr(config, key) and getattr(config, key) != trained[key]]
    if wrong:
        fixes = " ".join(f"--set {method}.{key}={value}" for key, value in wrong)
        raise UserError(f"checkpoint {path} was trained with other network settings: pass {fixes}")


class VPD:
    """The refbench method: a VPDNet with a trained checkpoint loaded."""

    Config: ClassVar[type] = VPDConfig
    method_name: ClassVar[str] = "vpd"
    adapter: ClassVar[bool] = True
    unet_trainable: ClassVar[bool] = True
    lora: ClassVar[bool] = False

    @classmethod
    def network(cls, config: VPDConfig, host: PluginHost) -> VPDNet:
        return VPDNet(config, cls.adapter, cls.unet_trainable, cls.lora, host, cls.method_name)

    @classmethod
    def check_config(cls, config: VPDConfig) -> None:
        """Before anything runs: an evaluation needs a checkpoint."""
        if not config.checkpoint:
            raise UserError(
                f"{cls.method_name} is trainable and has no checkpoint: pass --set "
                f"{cls.method_name}.checkpoint=PATH (VPD's released .pth, or one 'refbench train "
                f"--method {cls.method_name}' wrote), or 'shipped' for refbench's checkpoint of "
                f"the bundled model (no random decoder is ever evaluated)",
                fix_args=(["--backbone", "shapes"] if config.backbone != "shapes" else [])
                + ["--set", f"{cls.method_name}.checkpoint=shipped"])

    def __init__(self, config: VPDConfig, *, host: PluginHost):
        self.check_config(config)
        # the family first: a checkpoint cannot make an MM-DiT fit (the shared copy, no reload)
        shared = load_backbone(config.backbone, config.device, config.dtype, host=host)
        require_family(self.method_name, shared.family,
                       supported_families(self.adapter, self.unet_trainable, self.lora), FAMILY_REASON)
        if config.checkpoint == SHIPPED:
            config = dataclasses.replace(config, checkpoint=str(shipped_checkpoint(
                self.method_name, config.backbone)))
        path = Path(config.checkpoint)
        if path.suffix in (".pth", ".pt", ".ckpt"):
            from methods.vpd.ldm import load_vpd_checkpoint

            self.config = config
            self.net = self.network(config, host)
            load_vpd_checkpoint(path, self.net)
            # its UNet and VAE are the checkpoint's now: latents cached for the backbone's own
            # weights must not be reused for them
            self.net.backbone.fingerprint += f"+vpd:{ckpt.checkpoint_hash(path)}"
        else:
            tensors, meta = ckpt.load(path)
            trained_for = meta.get("method")
            if trained_for and trained_for != self.method_name:
                raise UserError(f"checkpoint {path} was trained for {trained_for}, not {self.method_name}")
            _check_architecture(self.method_name, config, meta.get("config", {}), str(path))
            self.config = config
            self.net = self.network(config, host)
            trained_on, now = meta.get("backbone"), self.net.backbone.fingerprint
            if trained_on and trained_on != now:  # the backbone's weights changed since training
                raise UserError(f"checkpoint {path} was trained on other weights of backbone "
                                f"{config.backbone!r} (fingerprint {trained_on}, now {now}): retrain "
                                f"it with 'refbench train --method {self.method_name} --set "
                                f"{self.method_name}.backbone={config.backbone} ...'")
            self.net.load_checkpoint_state(tensors, f"checkpoint {path}")
        self.net.eval()
        self._hash = ckpt.checkpoint_hash(path)

    def weights_fingerprint(self) -> str:
        return f"{self.net.backbone.fingerprint}+{self._hash}"

    def predict(self, batch: Batch) -> list[Prediction]:
        return self.net.predict(batch)

    def export(self, path: Path) -> Path:
        """Write the loaded network in VPD's own .pth format (``refbench export``)."""
        from methods.vpd.ldm import export_vpd_checkpoint

        return export_vpd_checkpoint(self.net, path)


class FrozenVPD(VPD):
    method_name = "f_vpd"
    adapter = False
    unet_trainable = False


class LoRAVPD(VPD):
    Config = LoRAVPDConfig
    method_name = "lora_vpd"
    unet_trainable = False
    lora = True
