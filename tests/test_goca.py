"""GoCA against a plain reimplementation of its original code (tests/reference/goca.py), on the
same weights, images, captions, posterior samples, noise and timestep; batch-size invariance;
each option of refbench's changes the output; bad values are one-line errors; the acceptance
command on a tiny model saved in diffusers' layout and a minimal VOC tree.

On the trained ``shapes`` model the comparison runs at the method's defaults in fp32. The random
``tiny`` presets have near-uniform self-attention: twice multiplied by it, a map keeps a
contrast of about 1e-3 of its values, and the final min-max stretches fp32 rounding (1e-7)
to about 1e-3 (measured on these 44 samples: up to 2.9e-3 on tiny, 3.7e-3 on tiny-sdxl; label
maps agree on >= 99.5% of the pixels). There the backbone runs in float64 (the method's defaults
otherwise: its arithmetic follows the backbone's dtype), where the same computation agrees to
1e-6.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.goca.model import GoCA, GoCAConfig, gaussian_blur
from refbench.config import Override
from refbench.candidates import candidate, resolve_config
from refbench.data.coco import CocoSemanticDataset
from refbench.data.images import load_rgb
from refbench.data.shapes import ShapesConfig, generate
from refbench.diffusion.backbone import load_backbone
from refbench.diffusion.families import FamilyError
from refbench.errors import UserError
from refbench.method import Batch, at_reporting_threshold, sample_seed
from refbench.plugins import PluginHost
from tests.conftest import run_cli_here
from tests.reference import goca as reference

HOST = PluginHost()
# shapes has no layer of SD 1.5's refinement list; refbench takes the same roles on its finest
# level (methods/goca/layers.py), and the reference is handed that list
SHAPES_SELF = ("up-level2-repeat0-vit-block0", "up-level2-repeat1-vit-block0",
               "down-level0-repeat0-vit-block0")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these models are small, and on a shared CPU a second thread mostly
    waits (the file runs several times faster); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def semantic(tmp_path_factory: pytest.TempPathFactory):
    """A RefShapes copy with 40+ semantic val samples (several classes per image)."""
    root = tmp_path_factory.mktemp("goca-shapes")
    generate(root, ShapesConfig(seed=11, images={"train": 4, "val": 26, "testA": 1, "testB": 1}))
    samples = CocoSemanticDataset(root, "refshapes-semantic", image_subdir="images/train2014").samples("val")
    assert len(samples) >= 40 and len({s.group for s in samples}) < len(samples)
    return samples


def _batch(samples) -> Batch:
    return Batch(samples, [load_rgb(s.image_path) for s in samples],
                 [sample_seed(0, s.sample_id) for s in samples])


def _compare(method: GoCA, samples, layers: tuple, t: int, size: int | None = None):
    """(max |score difference| per sample, label-map agreement per image) against the reference,
    run with the method's refinement order and background offset."""
    batch = _batch(samples)
    ours = method.predict(batch)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.group, []).append(i)
    offset = method.config.background_offset
    differences, agreement = [], []
    for rows in groups.values():
        words = [samples[i].expression for i in rows]
        classes, background, labels = reference.original_maps(
            method.backbone, batch.images[rows[0]], words, batch.seeds[rows[0]], *layers, t=t,
            size=size, offset=offset, order=method.config.refine_order)
        scores = np.stack([ours[i].scores for i in rows])
        for j, i in enumerate(rows):
            # the reference's maps as refbench hands them over: the offset at the reported 0.5
            expected = at_reporting_threshold((classes[j] - background + 1) / 2, (offset + 1) / 2)
            differences.append(float(np.abs(scores[j] - expected).max()))
        # the harness's label map: the highest score's class, background below 0.5
        mine = np.where(scores.max(0) >= 0.5, scores.argmax(0) + 1, 0)
        agreement.append(float((mine == labels).mean()))
    return differences, agreement


@pytest.mark.slow
@pytest.mark.parametrize("harness", [False, True], ids=["method-defaults", "harness-defaults"])
def test_shapes_equals_the_original_computation(semantic, harness: bool):
    """The method's defaults (the original's SD 1.5 settings), and the harness's for shapes
    (what ``--set goca.backbone=shapes`` runs: the backbone's recommended settings, chosen on
    its train split: one refinement, offset 0.2)."""
    if harness:
        config = resolve_config(HOST.method("goca"), [Override("goca", "backbone", "shapes"),
                                                      Override("goca", "device", "cpu")], HOST)
        assert (config.refine_order, config.background_offset) == (1, 0.2)
    else:
        config = GoCAConfig(backbone="shapes", device="cpu")
    method = GoCA(config, host=HOST)
    assert method.layers.fallback_self and [b.name for b in method.layers.refine] == sorted(
        SHAPES_SELF, key=lambda n: (n.startswith("up"), n))
    differences, agreement = _compare(
        method, semantic, (reference.SD15_CROSS, reference.SD15_REF, SHAPES_SELF), t=101)
    assert len(differences) >= 40
    assert max(differences) < 1e-4, max(differences)
    assert min(agreement) >= 0.999, min(agreement)


def _float64(method: GoCA) -> GoCA:
    method.backbone = load_backbone(method.config.backbone, "cpu", host=HOST, private=True).to(
        torch.device("cpu"), torch.float64)
    return method


@pytest.mark.slow
def test_tiny_equals_the_original_computation(semantic):
    """tiny at 128 (a 16 x 16 latent, as the other tiny presets): SD 1.5's layer lists exist."""
    method = _float64(GoCA(GoCAConfig(backbone="tiny", device="cpu", image_size=128), host=HOST))
    assert not method.layers.fallback_self and method.timestep == 101
    differences, agreement = _compare(
        method, semantic, (reference.SD15_CROSS, reference.SD15_REF, reference.SD15_SELF), t=101, size=128)
    assert len(differences) >= 40
    assert max(differences) < 1e-4, max(differences)
    assert min(agreement) >= 0.999, min(agreement)


@pytest.mark.slow
def test_tiny_sdxl_equals_the_original_computation(semantic):
    method = _float64(GoCA(GoCAConfig(backbone="tiny-sdxl", device="cpu"), host=HOST))
    assert method.timestep == 100 and method.layers.ref.name == reference.SDXL_REF
    differences, agreement = _compare(
        method, semantic, (reference.SDXL_CROSS, reference.SDXL_REF, reference.SDXL_SELF), t=100)
    assert len(differences) >= 40
    assert max(differences) < 1e-4, max(differences)
    assert min(agreement) >= 0.999, min(agreement)


def test_results_do_not_depend_on_the_batch(semantic):
    method = GoCA(GoCAConfig(backbone="shapes", device="cpu"), host=HOST)
    samples = semantic[:9]
    together = method.predict(_batch(samples))
    groups: dict[str, list] = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    alone = [p for members in groups.values() for p in method.predict(_batch(members))]
    # batched kernels round differently (1e-7), which the min-max stretches; nothing else differs
    assert max(np.abs(a.scores - b.scores).max() for a, b in zip(together, alone)) < 1e-4


def test_refinement_through_attention_equals_the_matrix(semantic, monkeypatch):
    """Above 32 x 32 cells (SD 1.5's and SDXL's 64 x 64) S is never materialised: each layer's
    attention is applied to the maps (SDPA). Forced here on shapes' 16 x 16 grid."""
    import methods.goca.model as model

    method = GoCA(GoCAConfig(backbone="shapes", device="cpu"), host=HOST)
    batch = _batch(semantic[:6])
    matrix = method.predict(batch)
    monkeypatch.setattr(model, "SMALL_GRID", 0)
    attention = method.predict(batch)
    assert max(np.abs(a.scores - b.scores).max() for a, b in zip(matrix, attention)) < 1e-4


@pytest.fixture(scope="module")
def published(semantic):
    """The defaults' predictions on the first images (circles among them) of the shapes model."""
    base = GoCAConfig(backbone="shapes", device="cpu")
    batch = _batch(semantic[:5])
    return base, batch, GoCA(base, host=HOST).predict(batch)


@pytest.mark.parametrize("option, value", [
    ("posterior", "mean"), ("ref_channels", "all"), ("head_weights", "mean"),
    ("layer_weights", "mean"), ("rescale", "none"), ("blur", 0),
    ("refine_order", 1), ("background_token", False), ("background_offset", 0.2), ("timestep", 100),
    ("class_words", {"circle": "round disc"}), ("self_layers", ("up-level2-repeat0-vit-block0",))])
def test_each_option_changes_the_output(published, option, value):
    base, batch, defaults = published
    changed = GoCA(replace(base, **{option: value}), host=HOST).predict(batch)
    differences = [np.abs(a.scores - b.scores).max() for a, b in zip(defaults, changed)]
    assert max(differences) > 1e-3, differences


def test_math_dtype_is_the_backbone_dtype_on_a_cpu(published):
    """fp32 arithmetic is what the model's dtype gives on a CPU; it departs only in fp16 (CUDA)."""
    base, batch, defaults = published
    fp32 = GoCA(replace(base, math_dtype="fp32"), host=HOST).predict(batch)
    assert all(np.array_equal(x.scores, y.scores) for x, y in zip(defaults, fp32))


def test_prompt_tokens_are_the_captioners(semantic):
    method = GoCA(GoCAConfig(backbone="shapes", device="cpu"), host=HOST)
    samples = [replace(semantic[0], expression="hot-air balloon", meta={}),
               replace(semantic[1], expression="Dining Table", meta={})]
    plan = method.plan(samples)
    caption, objects, background, rescaling = reference.caption_plan(
        method.backbone.tokenizer, [s.expression for s in samples])
    assert plan.prompt == caption == "hot-air balloon, dining table, background"
    assert (plan.classes, plan.background, plan.rescaling) == (objects, background, rescaling)
    tokens = method.backbone.tokenizer.convert_ids_to_tokens(
        method.backbone.tokenizer(caption).input_ids)
    assert "-</w>" not in [tokens[p] for p in plan.classes[0]]  # "-" is not read
    no_background = GoCA(GoCAConfig(backbone="shapes", device="cpu", background_token=False), host=HOST)
    assert no_background.plan(samples).prompt == "hot-air balloon, dining table"


def test_gaussian_blur_is_torchvisions():
    maps = torch.rand(3, 9, 9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(gaussian_blur(maps, 5), reference.gaussian_blur(maps, 5), atol=1e-7)
    # torchvision's default sigma: 0.3 ((k - 1) / 2 - 1) + 0.8 = 1.1 for k = 5; a constant stays
    assert torch.allclose(gaussian_blur(torch.ones(1, 6, 6), 5), torch.ones(1, 6, 6), atol=1e-6)


@pytest.mark.parametrize("key, value, fragment", [
    ("timestep", "1000", "timestep must be in [0, 1000)"),
    ("blur", "4", "blur must be 0 (none) or an odd kernel size"),
    ("background_offset", "1", "background_offset must be in (-1, 1)"),
    ("refine_order", "-1", "refine_order must be >= 0"),
    ("class_words", '{"aeroplane": ""}', "class_words maps category names"),
    ("head_weights", "cosine", "choose one of"),
])
def test_bad_config_values_are_user_errors(key, value, fragment):
    with pytest.raises(UserError) as error:
        candidate(HOST, "goca", [Override("goca", key, value)])
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_bad_layers_and_families_are_user_errors():
    with pytest.raises(UserError, match="no layer 'up-level3-repeat0-vit-block0'"):
        GoCA(GoCAConfig(backbone="shapes", device="cpu", self_layers=("up-level3-repeat0-vit-block0",)),
             host=HOST)
    with pytest.raises(UserError, match="is not a layer name"):
        GoCA(GoCAConfig(backbone="shapes", device="cpu", ref_layer="up_blocks.2"), host=HOST)
    with pytest.raises(FamilyError, match="goca does not run on a flux backbone"):
        GoCA(GoCAConfig(backbone="tiny-flux", device="cpu"), host=HOST)


def test_prompt_errors_are_user_errors(semantic):
    method = GoCA(GoCAConfig(backbone="shapes", device="cpu"), host=HOST)
    with pytest.raises(UserError, match="has no token the captioner would read"):
        method.plan([replace(semantic[0], expression="the", meta={})])
    crowd = [replace(semantic[0], sample_id=f"x:{i}", expression=f"thing{i} object{i}", meta={})
             for i in range(30)]
    with pytest.raises(UserError, match="too many classes for one prompt"):
        method.plan(crowd)


@pytest.mark.slow
def test_acceptance_command_on_a_saved_tiny_and_a_voc_tree(tmp_path: Path):
    """refbench run --methods goca --dataset voc --split val --data-root ROOT
    --set goca.backbone=DIR --set goca.device=cpu, as the issue types it."""
    from PIL import Image

    directory = load_backbone("tiny", "cpu", host=HOST).save(tmp_path / "tiny-sd")
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(voc / "JPEGImages" / "2007_000001.jpg")
    labels = np.zeros((48, 64), np.uint8)
    labels[8:30, 6:30] = 15  # person
    labels[20:44, 34:60] = 12  # dog
    labels[0, :] = 255  # a boundary row, ignored
    Image.fromarray(labels, mode="L").save(voc / "SegmentationClass" / "2007_000001.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n")
    out = tmp_path / "run"
    result = run_cli_here("run", "--methods", "goca", "--dataset", "voc", "--split", "val",
                          "--data-root", str(voc), "--set", f"goca.backbone={directory}",
                          "--set", "goca.device=cpu", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    semantic = json.loads((out / "results.json").read_text())["results"]["goca"]["semantic"]
    assert semantic["classes"] == 3 and 0.0 <= semantic["mIoU"] <= 1.0
