"""Seg4Diff against a plain reimplementation of its original code (tests/reference/seg4diff.py),
on the same weights, images, prompts and noise: on tiny-sd3 (the SD3 family, random weights) and
on the trained shapes model (the UNet analogue), with the harness's default config; batch size;
each departure option; bad values; the other families; the acceptance command on a saved SD3
directory and a VOC tree."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from methods.seg4diff.model import Seg4Diff, Seg4DiffConfig, shortest_edge
from refbench.candidates import resolve_config
from refbench.config import Override
from refbench.data.coco import CocoSemanticDataset
from refbench.data.images import load_rgb
from refbench.data.sample import Sample
from refbench.data.shapes import ShapesConfig, generate
from refbench.errors import UserError
from refbench.method import Batch, sample_seed
from refbench.plugins import PluginHost
from tests.conftest import run_cli
from tests.reference.seg4diff import original_labels, original_maps, shortest_edge_resize

HOST = PluginHost()
# the reference's layer, named independently of refbench's ordering: SD3's block index; on shapes
# the finest up level's first cross-attention layer (the default chosen on RefShapes train data)
REFERENCE_LAYER = {"tiny-sd3": 0, "shapes": "up_blocks.2.attentions.0.transformer_blocks.0.attn2"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models here are tiny: one torch thread is fastest, and spares a shared machine's
    cores (two threads on a busy 2-core machine made each VAE encode 20x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def semantic(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    """At least 40 semantic samples (whole images, classes grouped)."""
    root = tmp_path_factory.mktemp("refshapes-seg4diff")
    generate(root, ShapesConfig(seed=3, images={"train": 1, "val": 24, "testA": 1, "testB": 1}))
    samples = CocoSemanticDataset(root, "refshapes-semantic", image_subdir="images/train2014").samples("val")
    assert len(samples) >= 40
    return samples


def _batch(samples: list[Sample]) -> Batch:
    return Batch(samples, [load_rgb(s.image_path) for s in samples],
                 [sample_seed(0, s.sample_id) for s in samples])


def _default(backbone: str, **values) -> Seg4Diff:
    """The config the harness builds (defaults, the backbone's recommendations, the overrides)."""
    overrides = [Override("seg4diff", "backbone", backbone), Override("seg4diff", "device", "cpu")]
    overrides += [Override("seg4diff", k, v) for k, v in values.items()]
    return Seg4Diff(resolve_config(HOST.method("seg4diff"), overrides, HOST), host=HOST)


def _groups(samples: list[Sample]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group, []).append(i)
    return groups


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tiny-sd3", "shapes"])
def test_score_maps_equal_the_original_computation(semantic: list[Sample], backbone: str):
    """Every sample's score map within 1e-4 of the original's (the class map over the class map
    plus the background word's, the default background rule), and the label map the harness makes
    from them (argmax, background below 0.5) equal to the original's argmax over the prompted
    words, background included, on >= 99.9% of each sample's pixels."""
    method = _default(backbone)
    assert method.config == Seg4DiffConfig(backbone=backbone, device="cpu")
    batch = _batch(semantic)
    ours = method.predict(batch)
    checked = 0
    for members in _groups(semantic).values():
        first = members[0]
        names = [semantic[i].meta["category"] for i in members] + ["background"]
        maps = original_maps(method.backbone, batch.images[first], names, batch.seeds[first],
                             REFERENCE_LAYER[backbone])
        expected = maps[:-1] / (maps[:-1] + maps[-1])
        scores = np.stack([ours[i].scores for i in members])
        assert np.abs(scores - expected).max() < 1e-4, semantic[first].sample_id
        reference = original_labels(maps)  # len(members): the background word
        labels = np.where(scores.max(0) >= 0.5, scores.argmax(0), len(members))
        for k in range(len(members)):
            assert ((labels == k) == (reference == k)).mean() >= 0.999, semantic[members[k]].sample_id
            checked += 1
    assert checked == len(semantic) >= 40


@pytest.mark.slow
def test_without_background_the_maps_are_the_class_maps(semantic: list[Sample]):
    """background=none (VOC20, PC59, ADE, Cityscapes): the prompt is the class names alone and
    each score is the original's class map, whose argmax is detectron2's."""
    samples = semantic[:12]
    method = _default("shapes", background="none")
    batch = _batch(samples)
    ours = method.predict(batch)
    for members in _groups(samples).values():
        first = members[0]
        maps = original_maps(method.backbone, batch.images[first],
                             [samples[i].meta["category"] for i in members], batch.seeds[first],
                             REFERENCE_LAYER["shapes"])
        assert np.abs(np.stack([ours[i].scores for i in members]) - maps).max() < 1e-4


def test_batch_size_does_not_change_maps(semantic: list[Sample]):
    method = _default("tiny-sd3")
    samples = semantic[:10]
    together = method.predict(_batch(samples))
    alone = []
    for members in _groups(samples).values():
        alone += method.predict(_batch([samples[i] for i in members]))
    assert max(np.abs(a.scores - b.scores).max() for a, b in zip(together, alone)) < 1e-5


@pytest.mark.parametrize("backbone, option, value", [
    ("tiny-sd3", "text_encoder_3", "t5"), ("shapes", "posterior", "sample"),
    ("shapes", "antialias", True), ("shapes", "test_resize", 0), ("shapes", "background", "first"),
    ("shapes", "norm_before_merge", True), ("shapes", "norm_after_merge", True),
    ("shapes", "noise_step", 14), ("shapes", "layer", 3), ("tiny-flux", "flux_unit_pixels", False),
    ("tiny-flux", "layer", 1)])
def test_each_option_changes_the_output(semantic: list[Sample], backbone: str, option: str, value):
    samples = semantic[:5]
    batch = _batch(samples)
    base = _default(backbone).predict(batch)
    departed = _default(backbone, **{option: value}).predict(batch)
    differences = [np.abs(a.scores - b.scores).max() for a, b in zip(base, departed)]
    assert min(differences) > 1e-4, differences


def test_class_words_and_names(semantic: list[Sample]):
    """The data set's own name is prompted (cut at '-'); class_words replaces it; the reader's
    prompt text is used with class_names=expression."""
    sample = replace(semantic[0], meta={**semantic[0].meta, "category": "circle-other"},
                     expression="round thing")
    method = _default("shapes")
    assert method._word(sample) == "circle"
    assert _default("shapes", class_words=("circle-other=disc",))._word(sample) == "disc"
    assert _default("shapes", class_names="expression")._word(sample) == "round thing"
    referring = replace(sample, is_class_name=False, expression="the t-shirt left of the cup")
    assert method._word(referring) == "the t-shirt left of the cup"


def test_token_columns_follow_the_original_count(semantic: list[Sample]):
    """Each word tokenized alone, consecutive after the start token; cut at 77."""
    method = _default("tiny-sd3")
    counts = [len(method.tokenizer(w)["input_ids"]) - 2 for w in ("aeroplane", "diningtable")]
    group = method._place([0, 1], ["aeroplane", "diningtable"], None)
    assert group.columns == [list(range(1, 1 + counts[0])), list(range(1 + counts[0], 1 + sum(counts)))]
    long = method._place([0, 1, 2], ["aeroplane " * 20, "cat", "dog"], 2)
    assert long.info["truncated"] == 1 and long.columns[1] == [] and long.info["lost"] == 2
    with pytest.raises(UserError, match="overlong=truncate"):
        _default("tiny-sd3", overlong="error")._place([0, 1], ["aeroplane " * 20, "cat"], None)


def test_schedule_is_the_originals():
    """SD3's 28-step schedule with shift 3 at timesteps[-8]: t = 515.07, sigma = 0.5151; the UNet
    analogue takes the same step of DDPM's schedule (t = 245)."""
    sd3 = _default("tiny-sd3")
    assert float(sd3.timestep) == pytest.approx(515.0721, abs=1e-3)
    assert float(sd3.sigma) == pytest.approx(float(sd3.timestep) / 1000, abs=1e-6)
    shapes = _default("shapes")
    assert int(shapes.timestep) == 245 and shapes.sigma is None


def test_detectron2_resize():
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    resized = shortest_edge(image, 640, 2560)
    assert resized.shape == (640, 853, 3)
    assert np.array_equal(resized, shortest_edge_resize(image, 640, 2560))
    tall = shortest_edge(np.zeros((3000, 100, 3), np.uint8), 640, 2560)
    assert tall.shape == (2560, 85, 3)


@pytest.mark.parametrize("backbone, layer", [("tiny", 13), ("tiny-sdxl", 10), ("tiny-flux", 0),
                                             ("tiny-sd2", 8)])
def test_every_family_runs(semantic: list[Sample], backbone: str, layer: int):
    method = _default(backbone)
    assert method.layer == layer
    samples = semantic[:3]
    out = method.predict(_batch(samples))
    for sample, prediction in zip(samples, out):
        assert prediction.scores.shape == (sample.height, sample.width)
        assert 0.0 <= prediction.scores.min() and prediction.scores.max() <= 1.0


def test_default_layers():
    """SD3's block 9 (Flux's 12) where the model is that deep, else the same relative depth."""
    assert _default("tiny-sd3").layer == 0  # 9 * 2 // 24
    assert _default("tiny-flux").layer == 0  # 12 * 3 // 57
    assert _default("shapes").layer_names[_default("shapes").layer] == REFERENCE_LAYER["shapes"]


def test_expert_layers_at_full_depth():
    """SD3-medium (24 joint blocks) and SD3.5 read block 9; FLUX.1-dev (19 + 38 blocks) layer 12."""
    from types import SimpleNamespace

    method = Seg4Diff.__new__(Seg4Diff)
    for family, depth, expected in (("sd3", 24, 9), ("sd3", 38, 9), ("flux", 57, 12), ("sd3", 8, 3)):
        method.backbone, method.layers = SimpleNamespace(family=family), [None] * depth
        assert method._default_layer() == expected, (family, depth)


@pytest.mark.parametrize("key, value, message", [
    ("layer", "7", "has 7 cross-attention layers"), ("layer", "-2", "layer must be -1"),
    ("noise_step", "0", "noise_step must be in"), ("noise_step", "40", "beyond the 28-step"),
    ("class_words", "table", "is not category=word"), ("background_word", " ", "background_word is empty"),
    ("dtype", "fp16", "needs a CUDA device"), ("background", "middle", "choose one of")])
def test_bad_values_are_user_errors(key: str, value: str, message: str):
    with pytest.raises(UserError, match=message):
        _default("shapes", **{key: value})


@pytest.mark.slow
def test_acceptance_command_on_a_saved_sd3_directory(tmp_path: Path):
    """``refbench run --methods seg4diff --dataset voc`` on tiny-sd3 saved in diffusers' layout
    and a minimal VOCdevkit/VOC2012 tree."""
    from PIL import Image

    from refbench.diffusion.backbone import load_backbone

    directory = load_backbone("tiny-sd3", "cpu", host=HOST).save(tmp_path / "sd3")
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)
    names = ["2007_000001", "2007_000002"]
    for i, name in enumerate(names):
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        labels = np.zeros((40, 48), np.uint8)
        labels[5:20, 5:30] = 15  # person
        labels[22:38, 10:40] = 12 if i else 8  # dog / cat
        labels[20, :] = 255
        png = Image.fromarray(labels, mode="P")
        png.putpalette(palette)
        (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        png.save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    result = run_cli("run", "--methods", "seg4diff", "--dataset", "voc", "--split", "val",
                     "--data-root", str(voc), "--set", f"seg4diff.backbone={directory}",
                     "--set", "seg4diff.device=cpu", "--out", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "seg4diff" in result.stdout


def test_auto_background_follows_the_protocol_the_harness_names(semantic: list[Sample]):
    """The default prompts the background word where background is a class (VOC21: batch
    background True, or unknown) and none where it is ignored (VOC20: False), as the original's
    class lists do."""
    samples = semantic[:6]
    auto, last, none = (_default("tiny-sd3", **({"background": b} if b else {}))
                        for b in (None, "last", "none"))
    plain = _batch(samples)
    for protocol, explicit in ((True, last), (None, last), (False, none)):
        ours = auto.predict(replace(plain, background=protocol))
        theirs = explicit.predict(plain)
        assert all(np.array_equal(a.scores, b.scores) for a, b in zip(ours, theirs)), protocol
    with_word = last.predict(plain)
    assert not all(np.allclose(a.scores, b.scores) for a, b in zip(with_word, none.predict(plain)))
