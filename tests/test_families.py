"""The later Stable Diffusion generations on their tiny presets: SD 2.x, SDXL, SD3 and Flux.

Per family: loading back from a saved directory (the family read from model_index.json), the
conditioning the family's pipeline builds, capture leaving the denoiser's output unchanged and
giving maps of the documented shapes (for the MM-DiTs: equal to an explicit joint softmax),
token alignment in that family's tokenizers, DiffSegmenter with its three binding variants end
to end, F-VPD end to end on the UNet families, and a one-line refusal where a method cannot run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from refbench.diffusion.backbone import load_backbone, load_pretrained
from refbench.diffusion.denoisers import capture, conditioning, denoise, noised, token_layout
from refbench.diffusion.prompts import align_layout
from refbench.errors import UserError
from refbench.plugins import PluginHost

HOST = PluginHost()
PRESETS = {"sd2": "tiny-sd2", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3", "flux": "tiny-flux"}
# documented in the README: grid sides of the captured cross-attention, and the text length
GRIDS = {"sd2": [2, 4, 8, 16], "sdxl": [4, 8], "sd3": [8], "flux": [8]}
TEXT = {"sd2": 77, "sdxl": 77, "sd3": 77 + 32, "flux": 32}
PROMPTS = ["a red circle", "the blue aardvark left of it"]


@pytest.fixture(scope="session", params=list(PRESETS))
def family_backbone(request):
    return load_backbone(PRESETS[request.param], "cpu", host=HOST)


def _inputs(bb, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    side = bb.image_size // bb.vae_scale_factor
    latents = torch.randn(2, bb.vae.config.latent_channels, side, side, generator=g)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.tensor([100, 700])
    with torch.no_grad():
        cond = conditioning(bb, PROMPTS)
    return noised(bb, latents, noise, t), t, cond


class _Custom:
    """A user's own processor object: capture must hand back this very object."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def _layers(denoiser) -> list:
    """Every attention module (diffusers 0.30's Flux model has no ``attn_processors``)."""
    return [m for m in denoiser.modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


def test_capture_leaves_output_unchanged_restores_processors_and_maps_have_documented_shapes(family_backbone):
    bb = family_backbone
    layers = _layers(bb.denoiser)
    first = layers[0].processor
    custom = _Custom(first)
    layers[0].set_processor(custom)
    before = [layer.processor for layer in layers]
    latents, t, cond = _inputs(bb)
    with torch.no_grad():
        plain = denoise(bb, latents, t, cond)
        finest = GRIDS[bb.family][-1]
        with capture(bb, None, finest) as record:
            captured = denoise(bb, latents, t, cond)
    after = [layer.processor for layer in layers]
    assert all(a is b for a, b in zip(after, before)) and after[0] is custom
    layers[0].set_processor(first)
    assert plain.shape == latents.shape
    assert (plain - captured).abs().max().item() <= 1e-5
    assert record.resolutions() == GRIDS[bb.family]
    for side in record.resolutions():
        maps = record.cross_maps(side)
        assert maps.shape == (2, TEXT[bb.family], side, side)
        total = maps.sum(1)
        if bb.family in ("sd3", "flux"):  # the text block of a joint softmax: below 1
            assert (total > 0).all() and (total < 1).all()
        else:
            assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    assert record.self_qk and all(q.shape[2] == finest ** 2 for q, _, _ in record.self_qk)


def test_sdxl_has_attention_only_at_the_two_inner_levels():
    bb = load_backbone("tiny-sdxl", "cpu", host=HOST)
    attended = [bool(getattr(block, "attentions", None)) for block in bb.unet.down_blocks]
    assert attended == [False, True, True]
    depths = [len(block.attentions[0].transformer_blocks) for block in bb.unet.down_blocks[1:]]
    assert depths == [2, 2]


def test_conditioning_is_what_each_pipeline_builds(family_backbone):
    bb = family_backbone
    ids = lambda tok, n=None: tok(PROMPTS, padding="max_length", max_length=n or tok.model_max_length,  # noqa: E731
                                  truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        cond = conditioning(bb, PROMPTS)
        if bb.family == "sd2":  # the last hidden state, as StableDiffusionPipeline
            assert torch.equal(cond.tokens, bb.text_encoder(ids(bb.tokenizer))[0]) and cond.pooled is None
            assert bb.prediction_type == "v_prediction"
        elif bb.family == "sdxl":  # both penultimate states side by side; the second's projection
            a = bb.text_encoder(ids(bb.tokenizer), output_hidden_states=True).hidden_states[-2]
            out = bb.text_encoder_2(ids(bb.tokenizer_2), output_hidden_states=True)
            assert torch.equal(cond.tokens, torch.cat([a, out.hidden_states[-2]], -1))
            assert torch.equal(cond.pooled, out.text_embeds)
        elif bb.family == "sd3":  # CLIPs padded to T5's width, then T5's tokens
            a = bb.text_encoder(ids(bb.tokenizer), output_hidden_states=True)
            b = bb.text_encoder_2(ids(bb.tokenizer_2), output_hidden_states=True)
            t5 = bb.text_encoder_3(ids(bb.tokenizer_3))[0]
            clip = torch.cat([a.hidden_states[-2], b.hidden_states[-2]], -1)
            assert cond.tokens.shape == (2, 77 + 32, 64)
            assert torch.equal(cond.tokens[:, :77, :clip.shape[-1]], clip)
            assert not cond.tokens[:, :77, clip.shape[-1]:].any()
            assert torch.equal(cond.tokens[:, 77:], t5)
            assert torch.equal(cond.pooled, torch.cat([a.text_embeds, b.text_embeds], -1))
        else:  # flux: T5's tokens, CLIP's pooled output
            assert torch.equal(cond.tokens, bb.text_encoder_2(ids(bb.tokenizer_2))[0])
            assert torch.equal(cond.pooled, bb.text_encoder(ids(bb.tokenizer)).pooler_output)


def test_flow_noise_interpolates_towards_the_noise():
    bb = load_backbone("tiny-sd3", "cpu", host=HOST)
    x, n = torch.ones(2, 16, 4, 4), torch.zeros(2, 16, 4, 4)
    out = noised(bb, x, n, torch.tensor([0, 250]))
    assert torch.equal(out[0], x[0]) and torch.allclose(out[1], torch.full_like(x[1], 0.75))


def test_token_alignment_finds_the_referents_pieces_in_each_tokenizer(family_backbone):
    bb = family_backbone
    prompt = "a photograph of the blue aardvark"
    layout = token_layout(bb)
    alignment = align_layout(layout, prompt)
    start = prompt.index("aardvark")
    positions = alignment.positions(start, start + len("aardvark"))
    for segment in layout:
        ids = segment.tokenizer(prompt).input_ids
        mine = [p - segment.offset for p in positions if segment.offset <= p < segment.offset + segment.length]
        assert len(mine) > 1  # a rare word: several pieces in every tokenizer
        assert segment.tokenizer.decode([ids[p] for p in mine]).strip() == "aardvark"
    assert [s.offset for s in layout] == ([0, 77] if bb.family == "sd3" else [0])


def _plain_joint_probabilities(bb, latents, t, cond):
    """Every joint layer's softmax computed explicitly by a processor written here (its output
    checked against the model's), image rows x text columns, head- and layer-averaged."""
    from refbench.diffusion.joint_attention import _rotate as rotate

    text_first, maps = bb.family == "flux", []
    n_text = cond.tokens.shape[1]

    def norm(layer, x):
        return x if layer is None else layer(x)

    def heads(x, attn):
        return x.view(x.shape[0], x.shape[1], attn.heads, -1).transpose(1, 2)

    class Plain:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                     image_rotary_emb=None, **kwargs):
            q, k, v = (heads(f(hidden_states), attn) for f in (attn.to_q, attn.to_k, attn.to_v))
            q, k = norm(attn.norm_q, q), norm(attn.norm_k, k)
            if encoder_hidden_states is not None:
                e = encoder_hidden_states
                eq, ek, ev = (heads(f(e), attn) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
                eq, ek = norm(attn.norm_added_q, eq), norm(attn.norm_added_k, ek)
                order = (lambda a, b: torch.cat([b, a], 2)) if text_first else (lambda a, b: torch.cat([a, b], 2))
                q, k, v = order(q, eq), order(k, ek), order(v, ev)
            if image_rotary_emb is not None:  # diffusers' own rotation, as its processors apply it
                q, k = rotate(q, k, image_rotary_emb)
            probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
            total = q.shape[2]
            image = slice(n_text, total) if text_first else slice(0, total - n_text)
            text = slice(0, n_text) if text_first else slice(total - n_text, total)
            maps.append(probs[:, :, image, text].mean(1))
            out = (probs @ v).transpose(1, 2).reshape(q.shape[0], total, -1)
            if encoder_hidden_states is None:
                return out
            if text_first:
                context, image_out = out[:, :n_text], out[:, n_text:]
            else:
                image_out, context = out[:, :total - n_text], out[:, total - n_text:]
            image_out = attn.to_out[1](attn.to_out[0](image_out))
            if not getattr(attn, "context_pre_only", False):
                context = attn.to_add_out(context)
            return image_out, context

    layers = _layers(bb.transformer)
    original = [layer.processor for layer in layers]
    for layer in layers:
        layer.set_processor(Plain())
    try:
        with torch.no_grad():
            out = denoise(bb, latents, t, cond)
    finally:
        for layer, processor in zip(layers, original):
            layer.set_processor(processor)
    return out, torch.stack(maps).mean(0)


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_joint_maps_equal_an_explicit_joint_softmax(name):
    bb = load_backbone(name, "cpu", host=HOST)
    latents, t, cond = _inputs(bb)
    with torch.no_grad():
        model_out = denoise(bb, latents, t, cond)
        with capture(bb) as record:
            denoise(bb, latents, t, cond)
    plain_out, plain_maps = _plain_joint_probabilities(bb, latents, t, cond)
    assert (plain_out - model_out).abs().max() < 1e-4  # the plain processor is the model's attention
    side = record.resolutions()[0]
    captured = record.cross_maps(side).flatten(2).transpose(1, 2)  # (B, N, T)
    assert (captured - plain_maps).abs().max() < 1e-5


def test_save_and_load_back_detects_the_family(family_backbone, tmp_path: Path):
    bb = family_backbone
    bb.save(tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    index.pop("_refbench_family")  # as a hub snapshot has it: the pipeline class tells
    (tmp_path / "model" / "model_index.json").write_text(json.dumps(index))
    loaded = load_pretrained(str(tmp_path / "model"), torch.device("cpu"), torch.float32)
    assert loaded.family == bb.family and loaded.image_size == bb.image_size
    latents, t, cond = _inputs(bb)
    with torch.no_grad():
        again = conditioning(loaded, PROMPTS)
        assert torch.equal(again.tokens, cond.tokens)
        assert torch.equal(denoise(loaded, latents, t, again), denoise(bb, latents, t, cond))


@pytest.fixture(scope="module")
def family_batch(shapes_root: Path):
    from refbench.data.images import load_rgb
    from refbench.data.refer import ReferDataset
    from refbench.method import Batch, sample_seed

    from dataclasses import replace

    samples = ReferDataset(shapes_root, "refshapes").samples("val")[:2]
    samples = [replace(s, expression=e) for s, e in zip(samples, ["the red circle", "the square"])]
    return Batch(samples, [load_rgb(s.image_path) for s in samples],
                 [sample_seed(0, s.sample_id) for s in samples])


def test_diffsegmenter_and_its_binding_variants_run(family_backbone, family_batch):
    from methods.diffsegmenter.model import (BindingConfig, DiffSegmenter, DiffSegmenterAB,
                                             DiffSegmenterConfig, DiffSegmenterNCR, DiffSegmenterUEA)

    name = PRESETS[family_backbone.family]
    settings = dict(backbone=name, device="cpu")
    methods = {"base": DiffSegmenter(DiffSegmenterConfig(**settings), host=HOST),
               "ncr": DiffSegmenterNCR(BindingConfig(**settings), host=HOST),
               "uea": DiffSegmenterUEA(BindingConfig(**settings, alpha=0.5), host=HOST),
               "ab": DiffSegmenterAB(BindingConfig(**settings, alpha=0.5), host=HOST)}
    out = {k: m.predict(family_batch) for k, m in methods.items()}
    for preds in out.values():
        for sample, pred in zip(family_batch.samples, preds):
            assert pred.scores.shape == (sample.height, sample.width)
            assert pred.scores.min() == 0.0 and pred.scores.max() == 1.0
    assert [p.info.get("binding_applied", 0) for p in out["ab"]] == [1, 0]
    for variant in ("ncr", "uea", "ab"):  # binding moves the maps of an expression with modifiers
        assert not np.allclose(out[variant][0].scores, out["base"][0].scores)
        assert np.array_equal(out[variant][1].scores, out["base"][1].scores)  # a bare noun: none


@pytest.mark.parametrize("name", ["tiny-sd2", "tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_f_vpd_trains_saves_and_predicts(name, family_batch, tmp_path: Path):
    from methods.vpd.model import FrozenVPD, VPDConfig
    from refbench import checkpoint as ckpt

    torch.manual_seed(0)
    config = VPDConfig(backbone=name, device="cpu", token_length=8, image_size=64)
    net = FrozenVPD.network(config, HOST)
    optimizer = torch.optim.AdamW(net.parameter_groups(0.0), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = net.loss(family_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in net.backbone.denoiser.parameters())
    assert set(net.checkpoint_state()) == {k for k in net.state_dict() if k.startswith("classifier.")}
    path = ckpt.save(tmp_path / "f.safetensors", net.checkpoint_state(),
                     {"method": "f_vpd", "backbone": net.backbone.fingerprint})
    method = FrozenVPD(VPDConfig(backbone=name, device="cpu", token_length=8, image_size=64,
                                        checkpoint=str(path)), host=HOST)
    for a, b in zip(net.predict(family_batch), method.predict(family_batch)):
        assert np.array_equal(a.scores, b.scores) and 0 <= a.scores.min() <= a.scores.max() <= 1


@pytest.mark.parametrize("method", ["vpd", "lora_vpd"])
def test_vpd_and_lora_vpd_refuse_an_mm_dit_in_one_line(method):
    from methods.vpd.model import LoRAVPD, LoRAVPDConfig, VPD, VPDConfig

    cls, config = {"vpd": (VPD, VPDConfig), "lora_vpd": (LoRAVPD, LoRAVPDConfig)}[method]
    with pytest.raises(UserError) as error:
        cls.network(config(backbone="tiny-flux", device="cpu"), HOST)
    message = str(error.value)
    assert "\n" not in message and f"{method} does not run on a flux backbone" in message
    assert "sd1, sd2, sdxl" in message


@pytest.mark.slow
def test_diffsegmenter_on_an_mm_dit_through_the_cli(shapes_root: Path, tmp_path: Path):
    from tests.conftest import run_cli

    result = run_cli("run", "--methods", "diffsegmenter", "--data-root", str(shapes_root),
                     "--set", "diffsegmenter.backbone=tiny-sd3", "--set", "diffsegmenter.device=cpu",
                     "--limit", "3", "--out", str(tmp_path), "--no-progress")
    assert result.returncode == 0, result.stderr
    entry = json.loads((tmp_path / "results.json").read_text())["results"]["diffsegmenter"]
    assert entry["n"] == 3 and entry["config"]["backbone"] == "tiny-sd3" and len(entry["sweep"]) == 19
    refused = run_cli("run", "--methods", "vpd", "--data-root", str(shapes_root), "--set",
                      "vpd.backbone=tiny-flux", "--set", "vpd.checkpoint=x.safetensors",
                      "--limit", "1", "--out", str(tmp_path / "f"), "--no-progress")
    from tests.conftest import assert_user_error

    assert_user_error(refused, "vpd does not run on a flux backbone", "sd1, sd2, sdxl")


def test_ls_shows_each_backbones_family(capsys):
    import argparse

    from refbench.cli.listing import ls

    ls(argparse.Namespace(what="backbones", params=False, backbone=None, strict_plugins=False))
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:] if line.startswith("  ")}
    for name, family in [("sd15", "sd1"), ("tiny", "sd1"), *((v, k) for k, v in PRESETS.items())]:
        assert f"family {family} " in rows[name], rows[name]


@pytest.mark.slow
def test_ls_params_shows_no_counts_where_a_method_cannot_run(capsys):
    import argparse

    from refbench.cli.listing import ls

    ls(argparse.Namespace(what="methods", params=True, backbone="tiny-flux", strict_plugins=False))
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert rows["vpd"][2:4] == ["-", "-"] and rows["lora_vpd"][2:4] == ["-", "-"]
    assert rows["f_vpd"][2] != "-" and int(rows["f_vpd"][3].replace(",", "")) > 0


def test_a_word_cut_off_by_t5_is_lost_and_stays_in_t5s_slots():
    bb = load_backbone("tiny-sd3", "cpu", host=HOST)
    prompt = "the " + "big " * 30 + "red circle"  # 34 T5 tokens with </s>: over the tiny T5 context (32)
    alignment = align_layout(token_layout(bb), prompt)
    start = prompt.index("circle")
    clip, t5 = [p for p in alignment.positions(start, start + 6) if p < 77], \
        [p for p in alignment.positions(start, start + 6) if p >= 77]
    assert clip == [33] and not alignment.lost(clip)  # BOS and the 32 words before it
    assert t5 == [77 + 31] and alignment.lost(t5)  # T5's last slot (its </s>): cut off
    assert alignment.truncated and alignment.lost(clip + t5)
    assert alignment.lost_words()[-2:] == ["red", "circle"]
