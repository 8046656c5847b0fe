"""The grounding loss of pretrain-shapes: hand-computed values, dropped captions, and gradients
that reach the parts it is meant to train."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refbench.diffusion.attention import AttentionRecord, capture_attention
from refbench.diffusion.presets import small_tokenizer
from refbench.pretrain.captions import Caption
from refbench.pretrain.grounding import grounding_loss, word_tokens


def _reference(attention: np.ndarray, mask: np.ndarray) -> float:
    """One word at one resolution, written out: share outside plus the mean pixel BCE."""
    a, m = np.clip(attention.ravel(), 1e-6, 1 - 1e-6), mask.ravel()
    share_outside = 1 - (attention.ravel() * m).sum() / attention.sum()
    return share_outside + float(np.mean(-(m * np.log(a) + (1 - m) * np.log(1 - a))))


def _record(maps: torch.Tensor) -> AttentionRecord:
    """A record holding one resolution's layer-averaged maps, given as (B, T, r, r)."""
    b, t, r, _ = maps.shape
    record = AttentionRecord(cross_resolutions=None, self_resolution=None)
    record.cross_sums[r] = maps.flatten(2).transpose(1, 2)  # stored as (B, N, T)
    record.cross_counts[r] = 1
    return record


def test_loss_is_the_share_of_attention_outside_the_object_by_hand() -> None:
    tokenizer = small_tokenizer()
    caption = Caption("a red circle", ((2, 5, 0), (6, 12, 0)))  # "red" and "circle" name object 0
    mask = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])  # one object, cell coverage at 2x2
    maps = torch.zeros(2, 77, 2, 2)
    maps[0, 2] = torch.tensor([[0.4, 0.2], [0.1, 0.3]])  # "red": inside 0.4 + 0.1 of 1.0
    maps[0, 3] = torch.tensor([[0.3, 0.3], [0.0, 0.0]])  # "circle": inside 0.45 of 0.6
    maps[1] = torch.rand(77, 2, 2)  # a dropped caption: whatever it attends to does not count
    words = word_tokens(tokenizer, [caption, None], [mask, mask], 77)
    assert words[2].tolist() == [[1.0, 1.0], [0.0, 0.0]]
    red, circle, m = maps[0, 2].numpy(), maps[0, 3].numpy(), mask[0].numpy()
    assert 1 - (red * m).sum() / red.sum() == pytest.approx(0.5)  # inside 0.4 + 0.1 of 1.0
    assert 1 - (circle * m).sum() / circle.sum() == pytest.approx(1 - 0.45 / 0.6)
    expected = (_reference(red, m) + _reference(circle, m)) / 2
    assert float(grounding_loss(_record(maps), *words)) == pytest.approx(expected, rel=1e-5)


def test_loss_is_near_zero_on_the_mask_large_off_it_and_averages_resolutions() -> None:
    tokenizer = small_tokenizer()
    caption = Caption("the square", ((4, 10, 0),))
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1.0  # the top-left quarter
    inside, outside = torch.zeros(1, 77, 4, 4), torch.zeros(1, 77, 4, 4)
    inside[0, 2, :2, :2] = 1.0
    outside[0, 2, 2:, 2:] = 1.0
    words = word_tokens(tokenizer, [caption], [mask], 77)
    on = float(grounding_loss(_record(inside), *words))
    off = float(grounding_loss(_record(outside), *words))
    assert on == pytest.approx(0.0, abs=1e-5)  # all attention on the object, and all of it
    assert off == pytest.approx(_reference(outside[0, 2].numpy(), mask[0].numpy()), rel=1e-5)
    assert off > 1.0  # share outside 1, plus the pixel term
    # two resolutions: the mask is pooled to each (2x2: the top-left cell), the loss is the mean
    record = _record(inside)
    coarse = torch.zeros(1, 77, 2, 2)
    coarse[0, 2, 1, 1] = 1.0
    record.cross_sums[2] = coarse.flatten(2).transpose(1, 2)
    record.cross_counts[2] = 1
    pooled = np.array([[1.0, 0.0], [0.0, 0.0]])
    expected = (_reference(inside[0, 2].numpy(), mask[0].numpy()) + _reference(coarse[0, 2].numpy(), pooled)) / 2
    assert float(grounding_loss(record, *words)) == pytest.approx(expected, rel=1e-5)
    # nothing named at all: zero, not a division by zero
    empty = word_tokens(tokenizer, [None], [mask], 77)
    assert float(grounding_loss(_record(inside), *empty)) == 0.0


def test_gradient_reaches_the_text_encoder_and_the_cross_attention_keys() -> None:
    from refbench.pretrain.model import build_untrained
    from refbench.pretrain.scenes import draw_scene
    from refbench.diffusion.prompts import tokenize

    torch.manual_seed(0)
    backbone = build_untrained(0)
    rng = np.random.default_rng(0)
    scenes = [draw_scene(rng, 64, 16) for _ in range(2)]
    pixels = torch.stack([scene.pixels for scene in scenes])
    captions = [scene.caption for scene in scenes]
    ids = tokenize(backbone.tokenizer, [c.text for c in captions], torch.device("cpu"))
    context = backbone.text_encoder(ids)[0]
    latents = backbone.vae.encode(pixels).latent_dist.mean.detach()
    words = word_tokens(backbone.tokenizer, captions, [scene.masks for scene in scenes], ids.shape[1])
    with capture_attention(backbone.unet, keep_graph=True) as record:
        backbone.unet(latents, torch.tensor([200, 200]), encoder_hidden_states=context)
    loss = grounding_loss(record, *words)
    assert 0.0 < float(loss.detach()) < 10.0
    loss.backward()
    embedding = backbone.text_encoder.get_input_embeddings().weight.grad
    assert embedding is not None and embedding.abs().sum() > 0
    keys = [p.grad for n, p in backbone.unet.named_parameters() if n.endswith("attn2.to_k.weight")]
    assert keys and all(g is not None and g.abs().sum() > 0 for g in keys)
