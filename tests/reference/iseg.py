"""iSeg as its original code computes it, written plainly, to test refbench against.

Follows linsun449/iseg.code's open-vocabulary path step by step (``ovs/diff_for_openvocabulary.py``
``test_step``, ``wsss/iSeg.py`` ``process_cross_att`` / ``get_att_map``, ``base/iSeg.py``
``get_masks``, ``base/stable_difusion.py`` ``train_step`` / ``encode_imgs`` /
``get_attention_map``, ``util/attn.py`` ``AttnCLusterProcessor`` / ``kl_dis``,
``wsss/featurecluster.py`` ``DFC_KL``, ``util/cam.py`` ``cam_to_label``), with none of refbench's
machinery: the prompt glued together as the script glues it, the token positions counted from
the tables' token counts (or, for other tokenizers, by tokenizing prefixes of the prompt), the
image resized bilinearly without antialias, the VAE posterior mean scaled, the global generator
seeded before ``randn_like``, the scheduler's ``add_noise``, the original processor on its listed
layers storing the raw scores that are softmaxed afterwards, the heads concatenated in call
order, the clustering with the one-hot co-membership matrix, and the background rule
(1 - max)^2 >= max (or the threshold rule of ``bkg_thre > 0``).

Where the original is tied to SD 2.1 at 512 (its layer list, head indices, 64 / 16 / 32 and
0.18215), the plain generalisations here are: resolutions by level of the latent side, the VAE's
own scaling factor, and (``heads="all"``) every cross-attention layer at the weighted
resolutions and every self-attention layer at the finest one, every head.
"""

from __future__ import annotations

import math
from functools import reduce
from operator import add
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# ovs/arguments.py, attention_layers_to_use (eval'd as self.unet.<name>)
ATTENTION_LAYERS = [
    'down_blocks[0].attentions[0].transformer_blocks[0].attn2',
    'down_blocks[1].attentions[1].transformer_blocks[0].attn2',
    'down_blocks[2].attentions[0].transformer_blocks[0].attn2',
    'down_blocks[2].attentions[1].transformer_blocks[0].attn2',
    "up_blocks[1].attentions[0].transformer_blocks[0].attn2",
    "up_blocks[1].attentions[1].transformer_blocks[0].attn2",
    "up_blocks[1].attentions[2].transformer_blocks[0].attn2",
    "up_blocks[2].attentions[0].transformer_blocks[0].attn2",
    "up_blocks[2].attentions[1].transformer_blocks[0].attn2",
    "up_blocks[3].attentions[1].transformer_blocks[0].attn1",
    'up_blocks[3].attentions[2].transformer_blocks[0].attn2',
    'mid_block.attentions[0].transformer_blocks[0].attn1',
    'mid_block.attentions[0].transformer_blocks[0].attn2',
]
# wsss/iSeg.py, self.index, keyed by resolution at latent 64
INDEX = {32: [22, 5, 21, 13, 8, 27, 28, 6, 25],
         16: [76, 1, 43, 17, 81, 6, 44, 27, 2, 8, 22, 20, 60, 78, 12, 83, 94, 47,
              88, 96, 3, 33, 46, 52, 77, 93, 51, 58, 0, 13, 14, 19, 34, 41, 59, 87,
              16, 24, 28, 30, 32]}


def _dotted(name: str) -> str:
    return name.replace("[", ".").replace("]", "")


class OriginalProcessor:
    """util/attn.py's AttnCLusterProcessor, with base/stable_difusion.py's forward hook folded in:
    it keeps the raw attention scores (batch x heads merged) under the layer's name."""

    def __init__(self, name: str, store: dict[str, torch.Tensor]):
        self.name, self.store = name, store

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, **kwargs: Any) -> torch.Tensor:
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        # Attention.get_attention_scores of the bundled diffusers, returning the scores too
        dtype = query.dtype
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        if attention_mask is None:
            base = torch.empty(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype,
                               device=query.device)
            beta = 0
        else:
            base, beta = attention_mask, 1
        scores = torch.baddbmm(base, query, key.transpose(-1, -2), beta=beta, alpha=attn.scale)
        if attn.upcast_softmax:
            scores = scores.float()
        probs = scores.softmax(dim=-1).to(dtype)
        hidden = attn.batch_to_head_dim(torch.bmm(probs, value))
        bs_head, h, w = scores.shape
        self.store[self.name] = scores.reshape(bs_head // attn.heads, attn.heads, h, w)
        return attn.to_out[1](attn.to_out[0](hidden))


class ByResolution:
    """For the generalisation: the original processor on layers picked by their resolution at
    call time, the layer's own processor elsewhere."""

    def __init__(self, name: str, own: Any, store: dict, cross: set[int], self_res: int):
        self.original = OriginalProcessor(name, store)
        self.own, self.cross, self.self_res = own, cross, self_res

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, **kwargs: Any) -> torch.Tensor:
        res = math.isqrt(hidden_states.shape[1])
        wanted = res in self.cross if encoder_hidden_states is not None else res == self.self_res
        if wanted:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask)
        return self.own(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


def kl_dis(anchor: torch.Tensor, attn: torch.Tensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    anchor, attn = anchor.type(dtype) + 1e-5, attn.type(dtype) + 1e-5
    anchor, attn = anchor.unsqueeze(-2), attn.unsqueeze(-3)
    qoutient = torch.log(anchor) - torch.log(attn)
    kl_1 = torch.sum(anchor * qoutient, dim=-1) * 0.5
    kl_2 = -torch.sum(attn * qoutient, dim=-1) * 0.5
    return kl_1 + kl_2


def dfc_kl(x: torch.Tensor, number_cluster: int = 32, stage_num: int = 20, fea_size: int = 64,
           dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, int]:
    """wsss/featurecluster.py, DFC_KL.forward, on (c, h, w)."""
    sqrt = number_cluster ** 0.5
    grid = torch.arange(0, fea_size, fea_size // sqrt)[None]
    grid = grid.long()
    grid = grid.T * fea_size + grid
    x = x.flatten(-2, -1).T
    x = torch.where(x == 0, 1e-6, x)
    prototype, cluster = x[grid.flatten()], None
    for _ in range(stage_num):
        dis = kl_dis(prototype, x, dtype)
        values, cluster = torch.min(dis, dim=0)
        idx = cluster.unique()
        prototype = torch.stack([x[cluster == dat].mean(0) for dat in idx], dim=0)
    idx = cluster.unique()
    for idx_ in idx:
        cluster[cluster == idx_] = torch.nonzero(idx == idx_).squeeze()
    return cluster, len(idx)


def table_positions(entries: list[list[Any]]) -> list[list[int]]:
    """ovs/diff_for_openvocabulary.py's token_start_ids / token_sel_ids from [words, n, read]."""
    token_start_ids, token_sel_ids, last = [], [], None
    for idx, (cls, n, sel) in enumerate(entries):
        token_start_ids.append(token_start_ids[idx - 1] + 1 + last if idx > 0 else 4)
        token_sel_ids.append([token_start_ids[-1] + s for s in sel])
        last = n
    return token_sel_ids


def aligned_positions(tokenizer: Any, prefix: str, entries: list[list[Any]]) -> list[list[int]]:
    """Each class's read words located by tokenizing the prompt up to them (BOS at 0): the
    words at the read offsets when the entry counts one token per word, else all its words."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids) if text.strip() else 0

    out, text = [], prefix
    for cls, n, sel in entries:
        words = cls.split(" ")
        chosen = sel if n and n == len(words) else range(len(words))
        positions = []
        for j in chosen:
            before = text + " ".join(words[:j])
            upto = text + " ".join(words[:j + 1])
            positions += list(range(1 + count(before), 1 + count(upto)))
        out.append(positions)
        text = text + cls + " and "
    return out


@torch.no_grad()
def original_maps(backbone: Any, image: np.ndarray, entries: list[list[Any]], *,
                  token_mode: str, heads: str, weights: dict[int, float], seed: int = 1101,
                  t: int = 100, enhanced: float = 1.6, ent: float = 0.015, iters: int = 8,
                  cluster: bool = True, n_cluster: int = 32, steps: int = 20,
                  kl_dtype: torch.dtype = torch.float16, mask_size: int = 512,
                  bkg_thre: float = 0.0,
                  suffix: str = " and other object and background",
                  bg_context: str = "ground, land, grass, tree, building, wall, sky, lake, water",
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The original's normalised class maps (C, H, W), in ``entries`` order, and its label map
    (0 background, k = the k-th entry). ``entries``: [words, token count, read offsets]; a
    count of 0 means every token, counted by the backbone's tokenizer."""
    unet, vae, encoder, tokenizer = backbone.unet, backbone.vae, backbone.text_encoder, backbone.tokenizer
    device, dtype = backbone.device, backbone.dtype
    entries = [[w, n or len(tokenizer(w, add_special_tokens=False).input_ids),
                sel if n else list(range(len(tokenizer(w, add_special_tokens=False).input_ids)))]
               for w, n, sel in entries]
    # test_step: the prompt and the tokens read
    text = "a photograph of "
    for cls, _, _ in entries:
        text += cls + " and "
    text = text[:-5] + suffix + bg_context
    if token_mode == "table":
        token_sel_ids = table_positions(entries)
    else:
        token_sel_ids = aligned_positions(tokenizer, "a photograph of ", entries)
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    embedding = encoder(ids.to(device), output_hidden_states=True)[0]
    meaning_index = reduce(add, token_sel_ids)
    embedding[:, meaning_index] *= enhanced

    # train_step: resize, encode (posterior mean), seeded noise, one forward
    size = backbone.image_size
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).to(device, dtype)
    latents = vae.encode(2 * x - 1).latent_dist.mean * vae.config.scaling_factor
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        noise = torch.randn_like(latents)
    timestep = torch.tensor([t], device=device)
    noisy = backbone.scheduler.add_noise(latents, noise, timestep)
    latent = latents.shape[-1]
    store: dict[str, torch.Tensor] = {}
    own = unet.attn_processors
    if heads == "all":
        procs = {n: ByResolution(n, p, store, set(weights), latent) for n, p in own.items()}
    else:
        listed = {_dotted(n) + ".processor" for n in ATTENTION_LAYERS}
        procs = {n: (OriginalProcessor(n, store) if n in listed else p) for n, p in own.items()}
    unet.set_attn_processor(procs)
    try:
        unet(noisy, timestep, encoder_hidden_states=embedding)
    finally:
        unet.set_attn_processor(own)

    # get_attention_map: softmax of the kept scores, grouped by resolution in call order
    cross_maps: dict[int, list] = {}
    self_maps: dict[int, list] = {}
    for layer, raw in store.items():
        bs, head, n_img, n_txt = raw.shape
        hw = int(math.sqrt(n_img))
        reshaped = raw.reshape(bs, head, hw, hw, n_txt).softmax(-1)
        (cross_maps if layer.endswith("attn2.processor") else self_maps).setdefault(hw, []).append(reshaped)
    self_layers = dict(self_maps)
    cross_maps = {k: torch.cat(v, dim=1).permute(0, 1, 4, 2, 3) for k, v in cross_maps.items()}
    self_maps = {k: torch.cat(v, dim=1).permute(0, 1, 4, 2, 3) for k, v in self_maps.items()}

    # process_cross_att
    index = None if heads != "listed" else {latent // 2: INDEX[32], latent // 4: INDEX[16]}
    cross_attention = []
    for key in sorted(cross_maps):
        if key not in weights:
            continue
        values = cross_maps[key]
        values = values.mean(1) if index is None or key not in index else values[:, index[key]].mean(1)
        normed = values / values.sum(dim=(-2, -1), keepdim=True)
        if key != latent:
            normed = F.interpolate(normed, size=(latent, latent), mode='bilinear', align_corners=False)
        cross_attention.append(weights[key] * normed)
    cross_attention = torch.stack(cross_attention, dim=0).sum(0)[0]
    n_clusters = 0
    if cluster:
        clusters, n_clusters = dfc_kl(cross_attention, n_cluster, steps, latent, kl_dtype)
        one_hot = F.one_hot(clusters, n_clusters)
        self_att = one_hot[:, clusters]
        cross_attention = torch.matmul(self_att.type(cross_attention.dtype),
                                       cross_attention.flatten(-2, -1).permute(1, 0))
        cross_attention /= self_att.sum(-1, keepdim=True)
    else:
        cross_attention = cross_attention.flatten(-2, -1).permute(1, 0)
    cross_att = torch.stack([cross_attention[:, sel].mean(1) for sel in token_sel_ids], dim=1)[None].float()

    # get_att_map (entropy-reduced self-attention, iterations)
    cross_attn = cross_att - cross_att.amin(dim=-2, keepdim=True)
    cross_attn = cross_attn / cross_attn.sum(dim=-2, keepdim=True)
    if heads == "all":  # the generalisation: the mean over every head of every layer at the
        # finest grid, summed layer by layer in float32 (the layers of SD 1.5 at 512 would not
        # fit in memory side by side)
        total, count = None, 0
        for layer in self_layers[latent]:
            summed = layer.float().sum(1)
            total = summed if total is None else total + summed
            count += layer.shape[1]
        b_, hq, wq, n_k = total.shape
        trans_mat = (total / count).to(dtype).reshape(b_, hq * wq, n_k).float()
    else:
        trans_mat = self_maps[latent][:, [1, 2]].mean(1).flatten(-2, -1).permute(0, 2, 1).float()
    trans_mat /= torch.amax(trans_mat, dim=-2, keepdim=True)
    trans_mat += torch.where(trans_mat == 0, 0, ent * (torch.log10(torch.e * trans_mat)))
    trans_mat = torch.clamp(trans_mat, min=0)
    trans_mat_p = trans_mat.clone()
    trans_mat_p /= trans_mat_p.sum(dim=-1, keepdim=True)
    for _ in range(iters):
        cross_attn = torch.bmm(trans_mat_p, cross_attn)
        cross_attn -= cross_attn.amin(dim=-2, keepdim=True)
        cross_attn /= cross_attn.sum(dim=-2, keepdim=True)
    att_map = cross_attn.unflatten(dim=-2, sizes=(latent, latent)).permute(0, 3, 1, 2)
    att_map = F.interpolate(att_map, size=mask_size, mode='bilinear', align_corners=False)
    att_map = att_map[0]
    att_map -= att_map.amin(dim=(-2, -1), keepdim=True)
    att_map /= att_map.amax(dim=(-2, -1), keepdim=True)

    # test_step: to the label's size, cam_to_label
    h, w = image.shape[:2]
    cam = F.interpolate(att_map[None], size=(h, w), mode="bilinear", align_corners=False)
    b, c = cam.shape[:2]
    reshape_cam = cam.reshape(b, c, -1)
    reshape_cam -= reshape_cam.amin(dim=-1, keepdim=True)
    reshape_cam /= reshape_cam.amax(dim=-1, keepdim=True) + 1e-6
    normalised = reshape_cam.reshape(b, c, h, w).clone()
    if bkg_thre > 0:
        reshape_cam[reshape_cam < bkg_thre] = 0
        reshape_cam = reshape_cam.reshape(b, c, h, w)
        cam_value, label = reshape_cam.max(dim=1, keepdim=False)
        label += 1
        label[cam_value == 0] = 0
    else:
        valid_cam = reshape_cam.reshape(b, c, h, w)
        valid_cam = torch.cat([torch.pow(1 - valid_cam.amax(dim=1, keepdim=True), 2), valid_cam], dim=1)
        label = valid_cam.argmax(dim=1)
    return normalised[0].cpu().numpy(), label[0].cpu().numpy()
