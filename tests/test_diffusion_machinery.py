"""Backbones, attention capture and refinement, token alignment, referent parsing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from refbench.plugins import PluginHost
from refbench.diffusion.attention import capture_attention
from refbench.diffusion.backbone import load_pretrained
from refbench.diffusion.bpe import build_files
from refbench.diffusion.parsing import find_referent
from refbench.diffusion.prompts import align
from refbench.errors import UserError
from tests.conftest import assert_user_error, run_cli


def _forward(backbone, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 32, 32, generator=g)
    ids = backbone.tokenizer(["a red circle", "the blue square left of it"], padding="max_length",
                             max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        context = backbone.text_encoder(ids)[0]
        return latents, context, backbone.unet(latents, 100, encoder_hidden_states=context).sample


def test_save_and_load_back_by_path_gives_same_outputs(tiny_backbone, tmp_path: Path):
    tiny_backbone.save(tmp_path / "tiny")
    assert json.loads((tmp_path / "tiny" / "model_index.json").read_text())["unet"][1] == "UNet2DConditionModel"
    loaded = load_pretrained(str(tmp_path / "tiny"), torch.device("cpu"), torch.float32)
    _, _, a = _forward(tiny_backbone)
    _, _, b = _forward(loaded)
    assert torch.equal(a, b)
    assert loaded.tokenizer("red circle").input_ids == tiny_backbone.tokenizer("red circle").input_ids
    assert loaded.image_size == tiny_backbone.image_size == 256


@pytest.mark.slow
def test_missing_hub_model_is_one_line(shapes_root: Path, tmp_path: Path):
    result = run_cli("run", "--methods", "diffsegmenter", "--data-root", str(shapes_root), "--out",
                     str(tmp_path), "--limit", "1", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_user_error(result, "stable-diffusion-v1-5/stable-diffusion-v1-5", "HF_HUB_OFFLINE",
                      "--backbone shapes")
    missing_dir = run_cli("run", "--methods", "diffsegmenter", "--data-root", str(shapes_root), "--out",
                          str(tmp_path), "--limit", "1", "--set", f"diffsegmenter.backbone={tmp_path}/none/x/y")
    assert_user_error(missing_dir, "does not exist", "diffusers layout")


def test_dtype_needs_cuda():
    from refbench.diffusion.backbone import load_backbone

    with pytest.raises(UserError, match="needs a CUDA device"):
        load_backbone("tiny", "cpu", "fp16", host=PluginHost())


def test_capture_leaves_outputs_and_processors_unchanged(tiny_backbone):
    unet = tiny_backbone.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    latents, context, plain = _forward(tiny_backbone)
    with torch.no_grad(), capture_attention(unet, None, 32) as record:
        captured = unet(latents, 100, encoder_hidden_states=context).sample
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    assert torch.allclose(plain, captured, atol=1e-5)
    assert record.resolutions() == [4, 8, 16, 32]
    # 2 layers per down level, 3 per up level, 1 in the mid block
    assert record.cross_counts == {32: 5, 16: 5, 8: 5, 4: 1}
    maps = record.cross_maps(16)
    assert maps.shape == (2, 77, 16, 16)
    assert torch.allclose(maps.sum(1), torch.ones(2, 16, 16), atol=1e-5)  # softmax over tokens
    assert len(record.self_qk) == 5


def test_capture_records_only_the_conditional_half(tiny_backbone):
    latents, context, _ = _forward(tiny_backbone)
    with torch.no_grad(), capture_attention(tiny_backbone.unet, {16}, None) as full:
        tiny_backbone.unet(latents, 100, encoder_hidden_states=context)
    with torch.no_grad(), capture_attention(tiny_backbone.unet, {16}, None, conditional=slice(1, None)) as half:
        tiny_backbone.unet(latents, 100, encoder_hidden_states=context)
    assert half.cross_maps(16).shape[0] == 1
    assert torch.allclose(half.cross_maps(16)[0], full.cross_maps(16)[1])


def test_refinement_equals_naive_matmul(tiny_backbone):
    latents, context, _ = _forward(tiny_backbone)
    with torch.no_grad(), capture_attention(tiny_backbone.unet, None, 32) as record:
        tiny_backbone.unet(latents, 100, encoder_hidden_states=context)
    values = torch.rand(2, 32 * 32, 3)
    assert torch.allclose(record.refine(values), record.refine_naive(values), atol=1e-5)
    # more maps than the head width are handled in chunks
    wide = torch.rand(2, 32 * 32, 40)
    assert torch.allclose(record.refine(wide), record.refine_naive(wide), atol=1e-5)


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    folder = build_files(tmp_path_factory.mktemp("bpe"), Counter({"red": 3, "circle": 3, "the": 5, "of": 4}))
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                         model_max_length=12)


def test_alignment_with_clip_bpe(bpe_tokenizer):
    prompt = "the zebra of the red circle zebra"
    a = align(bpe_tokenizer, prompt)
    ids = bpe_tokenizer(prompt).input_ids
    pieces = bpe_tokenizer.convert_ids_to_tokens(ids)
    assert pieces[0] == "<|startoftext|>"
    zebra_first, zebra_second = a.word_positions[1], a.word_positions[6]
    assert len(zebra_first) > 1  # an unknown word splits into several pieces
    assert "".join(pieces[p] for p in zebra_first).replace("</w>", "") == "zebra"
    assert [pieces[p] for p in zebra_first] == [pieces[p] for p in zebra_second]  # repeated word
    assert a.positions(prompt.index("red"), prompt.index("red") + 3) == [a.word_positions[4][0]]
    assert pieces[a.word_positions[0][0]] == "the</w>" and a.word_positions[0] == (1,)  # BOS offset
    assert a.n_tokens == len(ids) and a.truncated  # max length 12 < tokens
    assert "zebra" in a.lost_words() and "the" not in a.lost_words()


def test_alignment_with_word_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2, "a": 3, "red": 4, "circle": 5}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                       special_tokens=[("[BOS]", 1), ("[EOS]", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", bos_token="[BOS]",
                                        eos_token="[EOS]", model_max_length=77)
    a = align(tokenizer, "a red unknown circle")
    assert a.word_positions == ((1,), (2,), (3,), (4,))
    assert not a.truncated


@pytest.mark.parametrize("expression, chunk, root, modifiers", [
    ("the red circle left of the blue square", "the red circle", "circle", True),
    ("the square that is red", "the square", "square", False),
    ("person", "person", "person", False),
    ("traffic light", "traffic light", "light", True),
    ("white dog playing with two black dogs", "white dog", "dog", True),
])
def test_referent(expression, chunk, root, modifiers):
    r = find_referent(expression)
    assert r.found
    assert expression[r.chunk[0]:r.chunk[1]] == chunk
    assert expression[r.root[0]:r.root[1]] == root
    assert r.has_modifiers == modifiers


def test_no_chunk_is_reported():
    assert not find_referent("left one").found


def test_latent_cache_full_of_other_entries_keeps_a_batch_whole(tiny_backbone, monkeypatch):
    """A batch mixing cached and new images must not evict its own cached entries (it did: a
    report over more than CACHE_SIZE images failed with a KeyError)."""
    import numpy as np

    from refbench.diffusion import latents as cache

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(5)]
    cache.clear_cache()
    monkeypatch.setattr(cache, "CACHE_SIZE", 3)
    first, _ = cache.latents_and_noise(tiny_backbone, images[:1], [1], 64)
    # image 0 is cached and the oldest; four new ones overflow the cache around it
    mixed, noise = cache.latents_and_noise(tiny_backbone, images, [1, 2, 3, 4, 5], 64)
    alone, alone_noise = cache.latents_and_noise(tiny_backbone, images[3:4], [4], 64)
    assert torch.equal(mixed[0], first[0]) and torch.equal(mixed[3], alone[0])
    assert torch.equal(noise[3], alone_noise[0]) and len(cache._CACHE) <= 3
    cache.clear_cache()
