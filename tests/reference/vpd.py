"""VPD's referring network built a second way, plainly, from VPD's and CompVis's code, to test
refbench's VPD against: an ldm-style UNet (input_blocks, middle_block, output_blocks, numbered as
openaimodel.py numbers them) whose every cross-attention computes its probabilities explicitly,
an ldm VAE encoder, the text adapter with gamma, and SimpleDecoding as a flat list of layers.
Its state dict uses VPD's names, so ``torch.save({"model": net.state_dict(), "args": ...})`` is a
checkpoint in VPD's released format.

Built from a diffusers UNet/VAE config so that it has the same architecture as a refbench
backbone (``tiny`` in the tests); the weights are its own, random.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, cin, eps=1e-5), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout))
        self.out_layers = nn.Sequential(nn.GroupNorm(groups, cout, eps=1e-5), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context: int, heads: int, store: Any = None):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context, dim, bias=False)
        self.to_v = nn.Linear(context, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))
        self.store = store  # where this layer's head-averaged probabilities go (cross only)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        b, n, _ = x.shape
        h = self.heads
        q = self.to_q(x).view(b, n, h, -1).transpose(1, 2)
        k = self.to_k(ctx).view(b, ctx.shape[1], h, -1).transpose(1, 2)
        v = self.to_v(ctx).view(b, ctx.shape[1], h, -1).transpose(1, 2)
        attn = (q @ k.transpose(-1, -2) * self.scale).softmax(dim=-1)
        if context is not None and self.store is not None:
            self.store(attn.mean(dim=1))  # (B, HW, T)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context: int, heads: int, store: Any):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context, heads, store)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, ch: int, context: int, heads: int, groups: int, store: Any):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(ch, context, heads, store)])
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        for block in self.transformer_blocks:
            y = block(y, context)
        return self.proj_out(y.reshape(b, h, w, c).permute(0, 3, 1, 2)) + x


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Sequential(nn.ModuleList):
    """ldm's TimestepEmbedSequential: each layer gets what it takes."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """openaimodel.UNetModel, the parts VPD uses, from a diffusers UNet2DConditionModel config."""

    def __init__(self, config: dict[str, Any], store: Any):
        super().__init__()
        chans = list(config["block_out_channels"])
        n_res, groups = config["layers_per_block"], config["norm_num_groups"]
        heads, context = config["attention_head_dim"], config["cross_attention_dim"]
        attn = ["CrossAttn" in t for t in config["down_block_types"]]
        self.levels, self.n_res = len(chans), n_res
        emb = chans[0] * 4
        self.model_channels = chans[0]
        self.time_embed = nn.Sequential(nn.Linear(chans[0], emb), nn.SiLU(), nn.Linear(emb, emb))
        self.store = store
        self.input_blocks = nn.ModuleList([Sequential([nn.Conv2d(config["in_channels"], chans[0], 3, padding=1)])])
        skips, ch = [chans[0]], chans[0]
        for level, out in enumerate(chans):
            for _ in range(n_res):
                layers = [ResBlock(ch, out, emb, groups)]
                ch = out
                if attn[level]:
                    layers.append(SpatialTransformer(ch, context, heads, groups, store("down")))
                self.input_blocks.append(Sequential(layers))
                skips.append(ch)
            if level != len(chans) - 1:
                self.input_blocks.append(Sequential([Downsample(ch)]))
                skips.append(ch)
        self.middle_block = Sequential([ResBlock(ch, ch, emb, groups),
                                        SpatialTransformer(ch, context, heads, groups, store("mid")),
                                        ResBlock(ch, ch, emb, groups)])
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(chans))):
            out = chans[level]
            for i in range(n_res + 1):
                layers = [ResBlock(ch + skips.pop(), out, emb, groups)]
                ch = out
                if attn[level]:
                    layers.append(SpatialTransformer(ch, context, heads, groups, store("up")))
                if level and i == n_res:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Sequential(layers))
        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, config["out_channels"], 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> list[torch.Tensor]:
        """VPD's register_hier_output: the states after output blocks 1, 4, 7, ... (the second of
        each coarse level) and after the last one; ``out`` is not applied."""
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        taps = {level * (self.n_res + 1) + min(1, self.n_res) for level in range(self.levels - 1)}
        outs = []
        for i, block in enumerate(self.output_blocks):
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
            if i in taps:
                outs.append(h)
        outs.append(h)
        return outs


class DiffusionWrapper(nn.Module):
    def __init__(self, unet: UNetModel):
        super().__init__()
        self.diffusion_model = unet


class UNetWrapper(nn.Module):
    def __init__(self, unet: UNetModel):
        super().__init__()
        self.unet = DiffusionWrapper(unet)


class ResnetBlock(nn.Module):  # the VAE's
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin, eps=1e-6), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout, eps=1e-6), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q = self.q(h).reshape(b, c, -1).transpose(1, 2)
        k = self.k(h).reshape(b, c, -1)
        v = self.v(h).reshape(b, c, -1)
        w = torch.softmax(q @ k * c ** -0.5, dim=-1)
        out = (v @ w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class VAEDownsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        chans, groups, n_res = list(config["block_out_channels"]), config["norm_num_groups"], config["layers_per_block"]
        self.conv_in = nn.Conv2d(config["in_channels"], chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        ch = chans[0]
        for level, out in enumerate(chans):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(n_res):
                stage.block.append(ResnetBlock(ch, out, groups))
                ch = out
            if level != len(chans) - 1:
                stage.downsample = VAEDownsample(ch)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetBlock(ch, ch, groups), AttnBlock(ch, groups), ResnetBlock(ch, ch, groups)
        self.norm_out = nn.GroupNorm(groups, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, 2 * config["latent_channels"], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class EncoderVQ(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        z = config["latent_channels"]
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)  # kept by VPD, never used

    def mode(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(x))
        return moments.chunk(2, dim=1)[0]  # the posterior's mean, unscaled


class TextAdapterRefer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))


class Classifier(nn.Module):
    """SimpleDecoding, its layers written out."""

    def __init__(self, dims: list[int]):
        super().__init__()
        hidden, c4, c3, c2, c1 = dims[-1] // 2, dims[3], dims[2], dims[1], dims[0]
        conv = lambda i, o, k: nn.Conv2d(i, o, k, padding=k // 2, bias=False)  # noqa: E731
        self.conv1_4, self.bn1_4, self.conv2_4, self.bn2_4 = conv(c4 + c3, hidden, 3), nn.BatchNorm2d(hidden), conv(hidden, hidden, 3), nn.BatchNorm2d(hidden)
        self.conv1_3, self.bn1_3, self.conv2_3, self.bn2_3 = conv(hidden + c2, hidden, 3), nn.BatchNorm2d(hidden), conv(hidden, hidden, 3), nn.BatchNorm2d(hidden)
        self.conv1_2, self.bn1_2, self.conv2_2, self.bn2_2 = conv(hidden + c1, hidden, 3), nn.BatchNorm2d(hidden), conv(hidden, hidden, 3), nn.BatchNorm2d(hidden)
        self.conv1_1 = nn.Conv2d(hidden, 2, 1)

    def forward(self, x_c4, x_c3, x_c2, x_c1):  # noqa: ANN001, ANN201
        up = lambda x, like: F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)  # noqa: E731
        x = torch.cat([up(x_c4, x_c3), x_c3], 1)
        x = F.relu(self.bn2_4(self.conv2_4(F.relu(self.bn1_4(self.conv1_4(x))))))
        x = torch.cat([up(x, x_c2), x_c2], 1)
        x = F.relu(self.bn2_3(self.conv2_3(F.relu(self.bn1_3(self.conv1_3(x))))))
        x = torch.cat([up(x, x_c1), x_c1], 1)
        x = F.relu(self.bn2_2(self.conv2_2(F.relu(self.bn1_2(self.conv1_2(x))))))
        return self.conv1_1(x)


class VPDRefer(nn.Module):
    """VPD's VPDRefer for a 4-level backbone, with VPD's state-dict names."""

    def __init__(self, unet_config: dict[str, Any], vae_config: dict[str, Any], token_length: int,
                 text_dim: int, size: int):
        super().__init__()
        self.size, self.token_length = size, token_length
        self.latent = size // 2 ** (len(vae_config["block_out_channels"]) - 1)
        self.maps: dict[str, list[torch.Tensor]] = defaultdict(list)
        store = lambda place: (lambda m: self.maps[place].append(m))  # noqa: E731
        self.encoder_vq = EncoderVQ(vae_config)
        self.unet = UNetWrapper(UNetModel(unet_config, store))
        self.text_adapter = TextAdapterRefer(text_dim)
        chans = list(unet_config["block_out_channels"])
        t = token_length
        self.classifier = Classifier([chans[0], chans[1] + t, chans[2] + t, chans[3]])
        self.gamma = nn.Parameter(torch.ones(text_dim) * 1e-4)

    def forward(self, image: np.ndarray, embedding: torch.Tensor) -> torch.Tensor:
        """Object probability at the input size, for one H x W x 3 uint8 image."""
        self.maps.clear()
        resized = np.array(Image.fromarray(image).resize((self.size, self.size), Image.Resampling.BILINEAR))
        x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():  # VPD encodes the image without a gradient
            latents = self.encoder_vq.mode((x - 0.5) / 0.5)
        context = embedding + self.gamma * self.text_adapter.fc(embedding)
        t = torch.ones(1, dtype=torch.long)
        outs = self.unet.unet.diffusion_model(latents, t, context)
        attn = defaultdict(list)
        for place in ("up", "down"):
            for m in self.maps[place]:
                side = math.isqrt(m.shape[1])
                if side * side <= (self.latent // 2) ** 2:
                    attn[side].append(m.transpose(1, 2).reshape(m.shape[0], -1, side, side))
        x_c4, x_c3, x_c2, x_c1 = outs  # after output blocks 1, 4, 7, last
        x_c3 = torch.cat([x_c3, torch.stack(attn[self.latent // 4]).mean(0)], 1)
        x_c2 = torch.cat([x_c2, torch.stack(attn[self.latent // 2]).mean(0)], 1)
        logits = F.interpolate(self.classifier(x_c4, x_c3, x_c2, x_c1), size=(self.size, self.size),
                               mode="bilinear", align_corners=True)
        return logits.softmax(dim=1)[0, 1]
