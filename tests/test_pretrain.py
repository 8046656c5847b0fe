"""The miniature model's training: captions that name what is drawn, a command that writes a
loadable diffusers directory, and reproducible, resumable runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from refbench.plugins import PluginHost
from refbench.data.shapes import COLOURS, SHAPES, _relation, _scene
from refbench.pretrain.captions import COLOUR_RATE, PREFIXES, describe
from tests.conftest import assert_user_error, run_cli

MENTION = re.compile(r"^(?:a |the )?(?:(?P<colour>\w+) (?P<shape>\w+)|(?P<bare>\w+)(?: that is (?P<after>\w+))?)$")
RELATION = re.compile(r" (left of|right of|above|below) ")


def _parse(caption: str) -> list[tuple[str, str | None, str | None]]:
    """(shape, colour or None, relation to the next mention or None) per mention."""
    for prefix in sorted(PREFIXES, key=len, reverse=True):
        if prefix and caption.startswith(prefix):
            caption = caption[len(prefix):]
            break
    items = re.split(r", | and (?!.* and )", caption)
    mentions = []
    for item in items:
        parts = RELATION.split(item)
        for k in range(0, len(parts), 2):
            match = MENTION.match(parts[k])
            assert match, (caption, parts[k])
            shape = match["shape"] or match["bare"]
            colour = match["colour"] or match["after"]
            mentions.append((shape, colour, parts[k + 1] if k + 1 < len(parts) else None))
    return mentions


@pytest.mark.parametrize("seed", range(40))
def test_captions_name_every_object_with_true_colours_and_relations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    objects = _scene(rng, int(rng.integers(2, 7)), 192, 256, 0.6)
    described = describe(objects, rng, relation_rate=0.5)
    caption = described.text
    mentions = _parse(caption)
    # the grounding spans: every object's shape word, and its colour word where it is named
    named = {(i, caption[s:e]) for s, e, i in described.words}
    assert {(i, o.shape) for i, o in enumerate(objects)} <= named, caption
    assert all(word in (objects[i].shape, objects[i].colour) for i, word in named), caption
    assert sum(word in COLOURS for _, word in named) == sum(m[1] is not None for m in mentions)
    assert sorted(m[0] for m in mentions) == sorted(o.shape for o in objects), caption
    assert all(m[0] in SHAPES and (m[1] is None or m[1] in COLOURS) for m in mentions)
    # every mention names an object that is there, no object twice (coloured mentions first)
    remaining = list(objects)
    matched: dict[int, object] = {}
    for index in sorted(range(len(mentions)), key=lambda i: mentions[i][1] is None):
        shape, colour, _ = mentions[index]
        candidates = [o for o in remaining if o.shape == shape and colour in (None, o.colour)]
        assert candidates, (caption, shape, colour)
        matched[index] = candidates[0]
        remaining.remove(candidates[0])
    # a relation between two fully named objects is true of them
    for index, (shape, colour, relation) in enumerate(mentions):
        if relation is not None and colour is not None and mentions[index + 1][1] is not None:
            assert _relation(matched[index], matched[index + 1]) == relation, caption

@pytest.mark.parametrize("colour_rate", [None, 0.4, 0.0, 1.0])
def test_caption_rates_are_what_they_claim(colour_rate: float | None) -> None:
    rng = np.random.default_rng(0)
    coloured = total = relations = 0
    for _ in range(400):
        objects = _scene(rng, 4, 224, 224, 0.6)
        rate = {} if colour_rate is None else {"colour_rate": colour_rate}
        mentions = _parse(describe(objects, rng, **rate).text)
        coloured += sum(m[1] is not None for m in mentions)
        total += len(mentions)
        relations += any(m[2] for m in mentions)
    expected = COLOUR_RATE if colour_rate is None else colour_rate
    assert expected - 0.05 <= coloured / total <= expected + 0.05
    assert 0.15 < relations / 400 < 0.31  # 0.3, less the scenes with no clear relation


SMALL = ("--vae-steps", "2", "--steps", "3", "--pool", "32", "--batch-size", "4",
         "--save-every", "2", "--threads", "1")


@pytest.mark.slow
def test_pretrain_writes_a_diffusers_directory_that_loads_and_is_reproducible(tmp_path) -> None:
    from refbench.diffusion.backbone import load_backbone

    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        result = run_cli("pretrain-shapes", "--out", str(out), *SMALL)
        assert result.returncode == 0, result.stderr
    index = json.loads((first / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    rows = (first / "loss.csv").read_text().splitlines()
    assert rows[0] == "stage,step,loss,seconds,grounding"
    assert [r.split(",")[:2] for r in rows[1:]][-1] == ["denoiser", "3"]
    summary = json.loads((first / "training.json").read_text())
    assert summary["done"] and summary["step"] == 3
    assert not (first / "pretrain_state.pt").exists()
    for part in ("unet", "vae", "text_encoder"):
        name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
        assert (first / part / name).read_bytes() == (second / part / name).read_bytes(), part
    backbone = load_backbone(str(first), "cpu", host=PluginHost())
    assert backbone.image_size == 64 and backbone.vae.config.scaling_factor != 1.0
    from refbench.diffusion.presets import small_tokenizer

    prompt = "a photograph of the purple triangle left of the circle"
    assert backbone.tokenizer(prompt)["input_ids"] == small_tokenizer()(prompt)["input_ids"]
    # a rerun with the same settings does nothing
    again = run_cli("pretrain-shapes", "--out", str(first), *SMALL)
    assert again.returncode == 0 and "already holds" in again.stdout
    # a model recorded before a setting existed counts that setting at its default
    summary = json.loads((first / "training.json").read_text())
    del summary["config"]["grounding_weight"]
    (first / "training.json").write_text(json.dumps(summary))
    older = run_cli("pretrain-shapes", "--out", str(first), *SMALL)
    assert older.returncode == 0 and "already holds" in older.stdout


@pytest.mark.slow
def test_pretrain_resumes_from_its_last_save(tmp_path) -> None:
    from refbench.pretrain.train import STATE, PretrainConfig, pretrain

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    config = dict(vae_steps=2, steps=4, pool=16, batch_size=4, vae_batch_size=4, save_every=2, log_every=1, threads=1)
    pretrain(whole, PretrainConfig(**config), echo=lambda _: None)
    # stop after the first denoiser save, as a SIGKILL would, then rerun
    with pytest.raises(KeyboardInterrupt):
        pretrain(resumed, PretrainConfig(**config), echo=_interrupt_at("denoiser step 2"))
    assert torch.load(resumed / STATE, weights_only=True)["step"] == 2
    pretrain(resumed, PretrainConfig(**config), echo=lambda _: None)
    steps = [r.split(",")[:2] for r in (resumed / "loss.csv").read_text().splitlines()[1:]]
    assert steps.count(["denoiser", "4"]) == 1 and steps.count(["denoiser", "2"]) == 1
    assert json.loads((resumed / "training.json").read_text())["done"]


def _interrupt_at(line: str):
    def echo(message: str) -> None:
        if message.startswith(line):
            raise KeyboardInterrupt
    return echo


@pytest.mark.slow
def test_pretrain_refuses_other_settings_in_the_same_folder(tmp_path) -> None:
    from refbench.pretrain.train import PretrainConfig, pretrain

    config = dict(vae_steps=2, steps=4, pool=16, batch_size=4, vae_batch_size=4, save_every=2, log_every=1, threads=1)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path, PretrainConfig(**config), echo=_interrupt_at("denoiser step 2"))
    result = run_cli("pretrain-shapes", "--out", str(tmp_path), "--vae-steps", "2", "--steps", "5",
                     "--pool", "32", "--batch-size", "4")
    assert_user_error(result, "other settings", "--out")
    bad = run_cli("pretrain-shapes", "--out", str(tmp_path / "x"), "--pool", "8", "--batch-size", "16")
    assert_user_error(bad, "batch_size 16 exceeds the scene pool of 8", "--pool")
    negative = run_cli("pretrain-shapes", "--out", str(tmp_path / "y"), "--grounding-weight", "-1")
    assert_user_error(negative, "--grounding-weight must be 0 (off) or positive")
    assert not (tmp_path / "y" / "loss.csv").exists()  # refused before any training
    rate = run_cli("pretrain-shapes", "--out", str(tmp_path / "z"), "--colour-rate", "1.5")
    assert_user_error(rate, "--colour-rate must be in [0, 1]")
    late = run_cli("pretrain-shapes", "--out", str(tmp_path / "w"), "--grounding-max-t", "1001")
    assert_user_error(late, "--grounding-max-t must be in 1..1000")


def test_min_snr_weights_match_hand_computed_values() -> None:
    from refbench.pretrain.train import _weighted_mse

    predicted = torch.zeros(2, 1, 1, 2)
    noise = torch.tensor([[[[1.0, 1.0]]], [[[2.0, 0.0]]]])  # per-sample MSE 1 and 2
    alphas_cumprod = torch.tensor([10 / 11, 2 / 3])  # SNR 10 and 2
    assert float(_weighted_mse(predicted, noise, alphas_cumprod, 0.0)) == pytest.approx(1.5)
    # gamma 5: the first sample weighs 5/10, the second min(2, 5)/2 = 1
    assert float(_weighted_mse(predicted, noise, alphas_cumprod, 5.0)) == pytest.approx((0.5 + 2) / 2)


@pytest.mark.slow
def test_init_from_continues_the_denoiser_and_keeps_the_autoencoder(tmp_path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_cli("pretrain-shapes", "--out", str(first), *SMALL).returncode == 0
    result = run_cli("pretrain-shapes", "--out", str(second), "--init-from", str(first), "--steps", "2",
                     "--pool", "16", "--batch-size", "4", "--snr-gamma", "5", "--threads", "1")
    assert result.returncode == 0, result.stderr
    vae = "vae/diffusion_pytorch_model.safetensors"
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (second / vae).read_bytes() == (first / vae).read_bytes()
    assert (second / unet).read_bytes() != (first / unet).read_bytes()
    stages = {r.split(",")[0] for r in (second / "loss.csv").read_text().splitlines()[1:]}
    assert stages == {"denoiser"}
    summary = json.loads((second / "training.json").read_text())
    assert summary["config"]["init_from"] == str(first) and summary["config"]["snr_gamma"] == 5.0
    # the phase it continues is on record: its summary and its loss curve
    assert summary["init"] == json.loads((first / "training.json").read_text())
    assert (second / "init_loss.csv").read_text() == (first / "loss.csv").read_text()
    third = tmp_path / "third"  # a phase on a phase: every earlier curve is kept, oldest last
    result = run_cli("pretrain-shapes", "--out", str(third), "--init-from", str(second), "--steps", "1",
                     "--pool", "16", "--batch-size", "4", "--grounding-weight", "0.1", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert (third / "init_loss.csv").read_text() == (second / "loss.csv").read_text()
    assert (third / "init_init_loss.csv").read_text() == (first / "loss.csv").read_text()
    chain = json.loads((third / "training.json").read_text())
    assert chain["init"]["init"] == json.loads((first / "training.json").read_text())
    grounding = [r.split(",")[4] for r in (third / "loss.csv").read_text().splitlines()[1:]]
    assert grounding and all(0 < float(g) < 10 for g in grounding)
    # grounding only below t=1: none of this seeded run's samples (t in 0..999, 4 per step) is at
    # t = 0, so the loss counts nothing, where the unrestricted run above logged a positive loss
    clean = tmp_path / "clean"
    result = run_cli("pretrain-shapes", "--out", str(clean), "--init-from", str(second), "--steps", "2",
                     "--pool", "16", "--batch-size", "4", "--grounding-weight", "0.1",
                     "--grounding-max-t", "1", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert [float(r.split(",")[4]) for r in (clean / "loss.csv").read_text().splitlines()[1:]] == [0.0]
    missing = run_cli("pretrain-shapes", "--out", str(tmp_path / "x"), "--init-from", str(tmp_path / "none"))
    assert_user_error(missing, "not a model directory", "--init-from")
