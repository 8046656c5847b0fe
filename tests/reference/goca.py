"""GoCA as its original code computes it, written plainly, to test refbench against.

Follows Darkbblue/goca's src-main (captioner.py, main.py, components/cross_attn_dispatch.py
``goca_cross_run``, space_attn_dispatch.py ``self_attn_run``, postprocess_dispatch.py
``affinity_propagate``, downstream_dispatch.py ``quantitative_evaluation`` with method
"offset") and generic-diffusion-feature's ``FeatureExtractor.extract`` with its attention
processor (install/components/attention.py ``AttnStoreProcessor``), step by step and with none
of refbench's machinery: every attention layer's per-head probabilities, value, attention output
and output weight stored under the feature gatherer's names; the caption's tokens aligned to its
entities by character offsets as the captioner does; the head weights as per-head products
A_n V_n W_n; the layer weights from the full reference affinity and 4-D resized self-attention
maps; the Gaussian blur written out as torchvision's; the self-attention averaged as an explicit
HW x HW matrix and applied twice; the label map by argmax over [t + background, classes].

The reference affinity is computed from the stored query exactly as ``goca_cross_run`` indexes
it: the stored (1, C, h, w) feature is reduced to (C, h, w) by the loop that drops the batch axis
of every non-self feature, then ``features[ref_layer][0]`` takes channel 0, so the affinity is
softmax(q0_i q0_j) of that one channel (``ref_channels="all"``: every channel, as the code's
comment "dim x h x w" intends).

The caption is what the captioner makes of a GPT-4o description that lists exactly the given
class words (then ", background" when ``background_token``). The posterior's epsilon and then
the noise come from one CPU generator seeded with the sample seed (the order img2img's
``prepare_latents`` draws them; the original draws them unseeded). Runs in the backbone's dtype
(the original stores every feature in fp16: on a CPU this is fp32 throughout).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SD15_CROSS = tuple([f"down-level{i}-repeat{j}-vit-block0" for i in range(3) for j in range(2)]
                   + ["mid-vit-block0"]
                   + [f"up-level{i}-repeat{j}-vit-block0" for i in range(1, 4) for j in range(3)])
SD15_REF = "up-level2-repeat1-vit-block0"
SD15_SELF = ("up-level3-repeat0-vit-block0", "up-level3-repeat1-vit-block0",
             "down-level0-repeat1-vit-block0")
SDXL_CROSS = tuple([f"down-level1-repeat{j}-vit-block{k}" for j in range(2) for k in range(2)]
                   + [f"down-level2-repeat{j}-vit-block{k}" for j in range(2) for k in range(10)]
                   + [f"mid-vit-block{k}" for k in range(10)]
                   + [f"up-level0-repeat{j}-vit-block{k}" for j in range(3) for k in range(10)]
                   + ["up-level1-repeat0-vit-block0", "up-level1-repeat0-vit-block1",
                      "up-level1-repeat1-vit-block0", "up-level1-repeat1-vit-block1",
                      "up-level1-repeat2-vit-block0"])
SDXL_REF = "up-level1-repeat0-vit-block0"
SDXL_SELF = ("up-level1-repeat0-vit-block0", "up-level1-repeat0-vit-block1",
             "up-level1-repeat1-vit-block0", "up-level1-repeat1-vit-block1",
             "up-level1-repeat2-vit-block0", "down-level1-repeat0-vit-block0",
             "down-level1-repeat0-vit-block1")


# -- the caption and its tokens (captioner.py) ----------------------------------------------
def split_with_parentheses(s: str) -> list[str]:
    """Commas outside parentheses split the caption (the captioner's helper, rewritten)."""
    out, buffer = [], ""
    for part in re.findall(r"\([^)]*\)|[^,]+", s):
        if part.startswith("(") and part.endswith(")"):
            out.append(part.strip())
        elif "(" in part:
            buffer = part.strip()
        elif ")" in part:
            buffer += f", {part.strip()}"
            out.append(buffer)
            buffer = ""
        elif buffer:
            buffer += f", {part.strip()}"
        else:
            out.append(part.strip())
    return out


def caption_plan(tokenizer: Any, words: list[str], background_token: bool = True
                 ) -> tuple[str, list[list[int]], list[list[int]], list[int]]:
    """(caption, token ids of each class word's entity, of each background entity, rescaling
    token ids) for a GPT caption listing ``words``."""
    caption = ", ".join(words)
    if background_token:
        caption += ", background"
    caption = caption.lower()
    entities = list(dict.fromkeys(split_with_parentheses(caption)))
    aligned = {e: i for i, e in enumerate(w.lower() for w in words)}  # entity -> class (its word)
    ids = tokenizer(caption, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True).input_ids
    vocab = {v: k for k, v in tokenizer.get_vocab().items()}
    tokens = []
    for i in ids:
        token = vocab[i]
        token = {"<|startoftext|>": "<sos>", "<|endoftext|>": "<pad>"}.get(token, token.replace("</w>", ""))
        tokens.append({"token": token})
    spans = []
    for e in entities:
        start = caption.find(e)
        spans.append((start, start + len(e)))
    idx = 0
    for t in tokens:
        if t["token"] in ("<sos>", "<pad>"):
            t["chars"] = None
        else:
            start = idx + caption[idx:].find(t["token"])
            t["chars"] = (start, start + len(t["token"]))
            idx = start + len(t["token"])
        if idx == len(caption):
            idx = 0
    for t in tokens:
        if t["chars"] and t["token"].lower() not in ("a", "an", "the", "and", ",", ".", "-"):
            for e_index, (start, end) in enumerate(spans):
                if t["chars"][0] >= start and t["chars"][1] <= end:
                    t["entity"] = e_index
                    break
    objects: dict[int, list[int]] = {aligned[e]: [] for e in entities if e in aligned}
    background: dict[int, list[int]] = {}
    rescaling = []
    for token_id, t in enumerate(tokens):
        if "entity" in t:
            rescaling.append(token_id)
            entity = entities[t["entity"]]
            if entity in aligned:
                objects[aligned[entity]].append(token_id)
            else:
                background.setdefault(t["entity"], []).append(token_id)
    return caption, [objects[i] for i in range(len(words))], list(background.values()), rescaling


# -- the forward (generic-diffusion-feature) -------------------------------------------------
class StoringProcessor:
    """AttnStoreProcessor's computation and gathers: q, the per-head value, the map, the
    attention output before to_out, to_out's weight; stored under the gatherer's names."""

    def __init__(self, name: str, store: dict[str, torch.Tensor]):
        self.name, self.store = name, store

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: Any = None,
                 temb: Any = None, **kwargs: Any) -> torch.Tensor:
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        side = math.isqrt(query.shape[1])  # FeatureStore: 'b (h w) c -> b c h w'
        self.store[f"{self.name}-q"] = query.transpose(1, 2).reshape(batch, -1, side, side)
        heads = attn.heads
        d = query.shape[-1] // heads
        to_heads = lambda x: x.view(batch, -1, heads, d).permute(0, 2, 1, 3).reshape(batch * heads, -1, d)
        q, k, v = to_heads(query), to_heads(key), to_heads(value)
        self.store[f"{self.name}-special-value"] = v
        probs = torch.softmax(torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype),
                                            q, k.transpose(-1, -2), beta=0, alpha=attn.scale), dim=-1)
        self.store[f"{self.name}-map"] = probs.reshape(batch, heads, *probs.shape[1:])
        out = torch.bmm(probs, v)
        out = out.view(batch, heads, -1, d).permute(0, 2, 1, 3).reshape(batch, -1, heads * d)
        self.store[f"{self.name}-special-post-value"] = out
        self.store[f"{self.name}-special-weight"] = attn.to_out[0].weight
        return attn.to_out[1](attn.to_out[0](out))


def _named_attention(unet: Any) -> list[tuple[str, Any]]:
    out = []
    for stage, levels in (("down", unet.down_blocks), ("up", unet.up_blocks)):
        for i, level in enumerate(levels):
            for j, attention in enumerate(getattr(level, "attentions", None) or []):
                for k, block in enumerate(attention.transformer_blocks):
                    out += [(f"{stage}-level{i}-repeat{j}-vit-block{k}-self", block.attn1),
                            (f"{stage}-level{i}-repeat{j}-vit-block{k}-cross", block.attn2)]
    for k, block in enumerate(unet.mid_block.attentions[0].transformer_blocks):
        out += [(f"mid-vit-block{k}-self", block.attn1), (f"mid-vit-block{k}-cross", block.attn2)]
    return out


def _encode(backbone: Any, caption: str, size: int) -> dict[str, Any]:
    def ids(tokenizer: Any) -> torch.Tensor:
        return tokenizer([caption], padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids

    if backbone.family == "sdxl":
        first = backbone.text_encoder(ids(backbone.tokenizer), output_hidden_states=True)
        second = backbone.text_encoder_2(ids(backbone.tokenizer_2), output_hidden_states=True)
        return {"encoder_hidden_states": torch.cat([first.hidden_states[-2], second.hidden_states[-2]], -1),
                "added_cond_kwargs": {"text_embeds": second[0],
                                      "time_ids": torch.tensor([[size, size, 0, 0, size, size]],
                                                               dtype=second[0].dtype)}}
    return {"encoder_hidden_states": backbone.text_encoder(ids(backbone.tokenizer))[0]}


def gaussian_blur(img: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """torchvision.transforms.functional.gaussian_blur(img, kernel_size) on (C, H, W)."""
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    ksize_half = (kernel_size - 1) * 0.5
    x = torch.linspace(-ksize_half, ksize_half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel1d = (pdf / pdf.sum()).to(img.dtype)
    kernel = torch.mm(kernel1d[:, None], kernel1d[None, :]).expand(img.shape[-3], 1, kernel_size, kernel_size)
    padded = F.pad(img[None], [kernel_size // 2] * 4, mode="reflect")
    return F.conv2d(padded, kernel, groups=img.shape[-3])[0]


@torch.no_grad()
def original_maps(backbone: Any, image: np.ndarray, words: list[str], seed: int,
                  cross_layers: tuple[str, ...], ref_layer: str, self_layers: tuple[str, ...],
                  t: int = 101, offset: float = 0.0, background_token: bool = True,
                  ref_channels: str = "first", size: int | None = None, order: int = 2
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class maps (n, H, W), supporting background map (H, W), label map (H, W): 0 background,
    i + 1 the i-th word) of the original run on ``image`` with ``words`` as its GPT caption."""
    unet, vae = backbone.unet, backbone.vae
    size = size or backbone.image_size  # img_size: 512 for SD 1.5, 1024 for SDXL
    caption, objects, background_objects, rescaling_token_id = caption_plan(
        backbone.tokenizer, words, background_token)

    # FeatureExtractor._preprocess_basic and VaeImageProcessor.preprocess; prepare_latents
    resized = np.array(Image.fromarray(image).resize((size, size)).convert("RGB")).astype(np.float32) / 255.0
    pixels = torch.from_numpy(resized).permute(2, 0, 1)[None] * 2.0 - 1.0
    posterior = vae.encode(pixels.to(backbone.dtype)).latent_dist
    generator = torch.Generator("cpu").manual_seed(seed)
    eps = torch.randn(posterior.mean.shape[1:], generator=generator)[None].to(backbone.dtype)
    noise = torch.randn(posterior.mean.shape[1:], generator=generator)[None].to(backbone.dtype)
    x0 = vae.config.scaling_factor * (posterior.mean + posterior.std * eps)
    a = backbone.scheduler.alphas_cumprod[t].to(backbone.dtype)
    latents = a.sqrt() * x0 + (1 - a).sqrt() * noise

    store: dict[str, torch.Tensor] = {}
    named = _named_attention(unet)
    saved = [m.processor for _, m in named]
    for name, module in named:
        module.set_processor(StoringProcessor(name, store))
    try:
        unet(latents, torch.tensor([t]), **_encode(backbone, caption, size))
    finally:
        for (_, module), processor in zip(named, saved):
            module.set_processor(processor)

    # FeatureStore keeps the requested features that exist, in the order they were stored
    wanted = {f"{l}-cross-map" for l in cross_layers}
    requested = set()
    for l in wanted:
        for part in ("map", "special-value", "special-post-value", "special-weight"):
            requested.add(l.replace("cross-map", f"cross-{part}"))
        requested.add(l.replace("cross", "self"))
    requested.add(f"{ref_layer}-cross-q")
    requested |= {f"{l}-self-map" for l in self_layers}
    features = {k: v for k, v in store.items() if k in requested}
    for k, v in list(features.items()):
        if "self" not in k and "weight" not in k and "special-value" not in k:
            features[k] = v[0]
    maps = [k for k in features if "self" not in k and k.endswith("-map")]

    # head-wise aggregation: "dot-product w/o clamp"
    for k in maps:
        v = features[k]  # heads x hw x n
        post_value = features[k.replace("map", "special-post-value")]
        weight = features[k.replace("map", "special-weight")].T
        heads = v.shape[0]
        d = weight.shape[0] // heads
        per_head = torch.stack([post_value[:, h * d:(h + 1) * d] @ weight[h * d:(h + 1) * d, :]
                                for h in range(heads)]).permute(1, 0, 2)  # hw x heads x D
        everything = (post_value @ weight).unsqueeze(-1)
        dot = torch.bmm(per_head, everything).squeeze(-1)
        natural = dot / dot.sum(dim=1, keepdim=True)
        total = torch.zeros(v.mean(0).shape, dtype=v.dtype)
        for h in range(heads):
            total = total + v[h] * natural[:, h].unsqueeze(-1)
        features[k] = total

    # layer-wise aggregation: "dot-product similarity". The query was stored as (1, C, h, w) and
    # reduced to (C, h, w) above; the original indexes it once more: (h, w), channel 0 alone
    ref = features[f"{ref_layer}-cross-q"][0] if ref_channels == "first" else features[f"{ref_layer}-cross-q"]
    ref_hw = ref.shape[-1]
    ref = ref.reshape(-1, ref_hw * ref_hw).permute(1, 0)[None]  # 1 x hw x dim
    ref = torch.softmax(torch.baddbmm(torch.empty(1, ref.shape[1], ref.shape[1], dtype=ref.dtype),
                                      ref, ref.transpose(-1, -2), beta=0, alpha=ref.shape[-1] ** -0.5),
                        dim=-1)[0]
    weights = []
    for k in maps:
        target = features[k.replace("cross", "self")][0].mean(dim=0)
        hw = math.isqrt(target.shape[0])
        target = target.reshape(hw, hw, hw, hw)
        target = F.interpolate(target, (ref_hw, ref_hw), mode="bilinear").permute(2, 3, 0, 1)
        target = F.interpolate(target, (ref_hw, ref_hw), mode="nearest").permute(2, 3, 0, 1)
        weights.append((ref.reshape(-1) * target.reshape(-1)).sum().clamp(min=0))
    weights = torch.stack(weights)
    weights = weights / weights.sum(dim=0, keepdim=True)
    grid = max(math.isqrt(features[k].shape[0]) for k in maps)  # feat_size: the finest grid
    aggregated = []
    for weight, k in zip(weights, maps):
        v = features[k]
        hw = math.isqrt(v.shape[0])
        v = v.reshape(hw, hw, -1).permute(2, 0, 1)
        v = F.interpolate(v[None], (grid, grid), mode="bilinear")[0].permute(1, 2, 0)
        aggregated.append(v * weight)
    aggregated = torch.stack(aggregated).sum(dim=0).clamp(min=0)
    raw = aggregated / aggregated.sum(dim=2, keepdim=True)  # grid x grid x n

    # rescaling: "sum-1 rescaling + per-token renorm+"
    feats = [raw[:, :, ids].mean(dim=-1) for ids in objects + background_objects]
    feats.append(raw[:, :, rescaling_token_id].sum(dim=-1))
    scores = torch.stack(feats).permute(1, 2, 0)
    scores = scores / scores[:, :, [len(feats) - 1]].sum(dim=2, keepdim=True)
    scores = gaussian_blur(scores.permute(2, 0, 1)).permute(1, 2, 0)
    low, high = scores.amin(dim=[0, 1], keepdim=True), scores.amax(dim=[0, 1], keepdim=True)
    scores = ((scores - low) / (high - low))[:, :, :-1].permute(2, 0, 1)
    classes, backgrounds = scores[:len(objects)], scores[len(objects):]
    if len(backgrounds):
        supporting = backgrounds.amax(dim=0, keepdim=True)
    else:
        supporting = torch.zeros((1, grid, grid), dtype=scores.dtype)
    cross_feat = torch.cat([classes, supporting])

    # self_attn_run, then affinity_propagate
    space = []
    for k in (k for k in store if k.endswith("-self-map") and k[:-len("-self-map")] in self_layers):
        s = store[k][0].mean(0)
        hw = math.isqrt(s.shape[0])
        s = s.reshape(hw, hw, hw, hw)
        s = F.interpolate(s, (grid, grid), mode="bilinear").permute(2, 3, 0, 1)
        s = F.interpolate(s, (grid, grid), mode="nearest").permute(2, 3, 0, 1)
        space.append(s)
    space = torch.stack(space).mean(dim=0).reshape(grid * grid, grid * grid)
    null = cross_feat[-1].amin() == 0 and cross_feat[-1].amax() == 0
    kept = cross_feat[:-1] if null else cross_feat
    c = kept.reshape(len(kept), -1).permute(1, 0)
    for _ in range(order):  # the postprocess step's 'order' (2 in the released configs)
        c = space @ c
    c = c.permute(1, 0).reshape(len(kept), grid, grid)
    low, high = c.amin(dim=[1, 2], keepdim=True), c.amax(dim=[1, 2], keepdim=True)
    c = (c - low) / (high - low)
    cross_feat = torch.cat([c, cross_feat[-1:]]) if null else c

    # quantitative_evaluation, method "offset"
    h, w = image.shape[:2]
    pred = F.interpolate(cross_feat[None].float(), (h, w), mode="bilinear")[0]
    full = torch.cat([offset + pred[-1:], pred[:-1]])
    return pred[:-1].numpy(), pred[-1].numpy(), full.argmax(dim=0).numpy()
