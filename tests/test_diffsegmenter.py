"""DiffSegmenter and the attribute-binding variants on the tiny backbone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.diffsegmenter.model import (BindingConfig, DiffSegmenter, DiffSegmenterAB,
                                         DiffSegmenterConfig, DiffSegmenterNCR, DiffSegmenterUEA)
from refbench.data.images import load_rgb
from refbench.data.refer import ReferDataset
from refbench.diffusion.prompts import align, encode
from refbench.errors import UserError
from refbench.method import Batch, sample_seed
from refbench.plugins import PluginHost
from tests.conftest import REPO, assert_user_error, run_cli

TINY = dict(backbone="tiny", device="cpu")


def _batch(samples, expressions=None):
    from dataclasses import replace

    if expressions is not None:
        samples = [replace(s, expression=e) for s, e in zip(samples, expressions)]
    images = [load_rgb(s.image_path) for s in samples]
    return Batch(list(samples), images, [sample_seed(0, s.sample_id) for s in samples])


@pytest.fixture(scope="module")
def val_samples(shapes_root: Path):
    return ReferDataset(shapes_root, "refshapes").samples("val")


HOST = PluginHost()


def _methods(alpha=0.7, **settings):
    return {
        "base": DiffSegmenter(DiffSegmenterConfig(**TINY, **settings), host=HOST),
        "ncr": DiffSegmenterNCR(DiffSegmenterConfig(**TINY, **settings), host=HOST),
        "uea": DiffSegmenterUEA(BindingConfig(**TINY, alpha=alpha, **settings), host=HOST),
        "ab": DiffSegmenterAB(BindingConfig(**TINY, alpha=alpha, **settings), host=HOST),
    }


def _sample(expression: str):
    from refbench.data.sample import Sample

    return Sample("s", 0, Path("x.jpg"), 8, 8, expression, {"size": [8, 8], "counts": "0"})


def test_embeddings_follow_equations_3_to_5(tiny_backbone):
    methods = _methods(alpha=0.7, emphasis=1.0)  # the write-up's equations, without Compel's ++
    expression = "the red circle left of the blue square"
    prompt = "a photograph of " + expression
    tok, enc = tiny_backbone.tokenizer, tiny_backbone.text_encoder
    with torch.no_grad():
        E = encode(enc, tok, [prompt])[0]
        R = encode(enc, tok, ["the red circle"])[0]
        U = encode(enc, tok, [""])[0]
        out = {k: m._embeddings([m._plan(expression, _sample(expression))])[0] for k, m in methods.items()}
    a = align(tok, prompt)
    chunk = [p for w in a.word_positions[3:6] for p in w]  # "the red circle"
    (q,) = a.word_positions[5]  # "circle"
    alone = [p for w in align(tok, "the red circle").word_positions for p in w]
    assert alone == [1, 2, 3] and chunk == [4, 5, 6] and q == 6
    others = [i for i in range(77) if i not in chunk]
    assert torch.equal(out["base"], E)
    # eq. 3: the chunk's rows come from the chunk encoded alone; nothing else changes
    assert torch.equal(out["ncr"][chunk], R[alone]) and torch.equal(out["ncr"][others], E[others])
    assert not torch.allclose(R[alone], E[chunk])  # the splice is not a no-op
    # eq. 4: only the target row is averaged with the unconditioned embedding
    not_q = [i for i in range(77) if i != q]
    assert torch.allclose(out["uea"][q], 0.7 * E[q] + 0.3 * U[q]) and torch.equal(out["uea"][not_q], E[not_q])
    # eq. 5: both
    assert torch.allclose(out["ab"][q], 0.7 * R[3] + 0.3 * U[q])
    assert torch.equal(out["ab"][[4, 5]], R[[1, 2]]) and torch.equal(out["ab"][others], E[others])


def test_compels_emphasis_composes_with_the_averaging(tiny_backbone):
    """z' = U + 1.21 (z - U) at the read word, then eq. 4: U + 1.21 alpha (z - U) at q."""
    methods = _methods(alpha=0.7)  # the published default: emphasis 1.21
    expression = "the red circle"
    tok, enc = tiny_backbone.tokenizer, tiny_backbone.text_encoder
    with torch.no_grad():
        E = encode(enc, tok, ["a photograph of " + expression])[0]
        R = encode(enc, tok, [expression])[0]
        U = encode(enc, tok, [""])[0]
        out = {k: m._embeddings([m._plan(expression, _sample(expression))])[0] for k, m in methods.items()}
    q, w = 6, 1.1 ** 2
    rest = [i for i in range(77) if i != q]
    assert torch.allclose(out["base"][q], U[q] + w * (E[q] - U[q]), atol=1e-6)
    assert torch.equal(out["base"][rest], E[rest])
    assert torch.allclose(out["uea"][q], U[q] + w * 0.7 * (E[q] - U[q]), atol=1e-6)
    assert torch.allclose(out["ab"][q], U[q] + w * 0.7 * (R[3] - U[q]), atol=1e-6)


def test_dependency_grouping_binds_every_postposed_attribute(shapes_root: Path):
    """Every "the <shape> that is <colour>" of RefShapes testA and testB: the noun-chunk rule
    leaves its embedding the baseline's; the dependency grouping changes it, in all three
    variants."""
    samples = [s for split in ("testA", "testB")
               for s in ReferDataset(shapes_root, "refshapes", kinds=["attribute"]).samples(split)
               if " that is " in s.expression]
    assert samples
    plans: dict = {}
    base = DiffSegmenter(DiffSegmenterConfig(**TINY), host=HOST)
    with torch.no_grad():
        baseline = base._embeddings([base._plan(s.expression, s) for s in samples])
        for grouping in ("chunk", "dependency"):
            for name, cls in (("ncr", DiffSegmenterNCR), ("uea", DiffSegmenterUEA), ("ab", DiffSegmenterAB)):
                method = cls(cls.Config(**TINY, grouping=grouping), host=HOST)
                batch_plans = [method._plan(s.expression, s) for s in samples]
                plans[grouping, name] = (method._embeddings(batch_plans), batch_plans)
    for name in ("ncr", "uea", "ab"):
        chunk, chunk_plans = plans["chunk", name]
        dependency, dependency_plans = plans["dependency", name]
        assert torch.equal(chunk, baseline)
        assert not any(p.info.get("binding_applied") for p in chunk_plans)
        for row, plan in enumerate(dependency_plans):
            assert plan.info.get("binding_applied") == 1 and not plan.info.get("chunk_mismatch")
            assert not torch.equal(dependency[row], baseline[row]), samples[row].expression


def test_bare_names_give_exactly_the_baseline(val_samples):
    methods = _methods()
    batch = _batch(val_samples[:2], ["circle", "the square"])
    maps = {k: m.predict(batch) for k, m in methods.items()}
    for k in ("ncr", "uea", "ab"):
        for a, b in zip(maps[k], maps["base"]):
            assert np.array_equal(a.scores, b.scores), k
            assert "binding_applied" not in a.info


def test_no_chunk_falls_back_and_is_counted(val_samples):
    methods = _methods()
    batch = _batch(val_samples[:1], ["left one"])
    ab, base = methods["ab"].predict(batch)[0], methods["base"].predict(batch)[0]
    assert ab.info["no_chunk"] == 1 and np.array_equal(ab.scores, base.scores)


def test_binding_changes_maps_with_modifiers(val_samples):
    methods = _methods()
    batch = _batch(val_samples[:1], ["the red circle"])
    ab, base = methods["ab"].predict(batch)[0], methods["base"].predict(batch)[0]
    assert ab.info["binding_applied"] == 1 and not np.array_equal(ab.scores, base.scores)
    assert ab.scores.shape == (val_samples[0].height, val_samples[0].width)
    assert 0 <= ab.scores.min() and ab.scores.max() <= 1


def test_batch_size_does_not_change_maps(val_samples):
    """On the trained shapes model: a random-weight model's nearly flat maps, stretched by the
    final min-max, would magnify float rounding past any tight tolerance."""
    method = DiffSegmenterAB(BindingConfig(backbone="shapes", device="cpu"), host=HOST)
    samples = val_samples[:3]
    together = method.predict(_batch(samples))
    from refbench.diffusion.latents import clear_cache
    clear_cache()
    alone = [method.predict(_batch([s]))[0] for s in samples]
    for a, b in zip(together, alone):
        assert np.abs(a.scores - b.scores).max() < 1e-5


def test_overlong_prompt(val_samples):
    long_expression = " ".join(["big"] * 80) + " red circle"
    batch = _batch(val_samples[:1], [long_expression])
    with pytest.raises(UserError, match="over the model's 77"):
        DiffSegmenter(DiffSegmenterConfig(**TINY), host=HOST).predict(batch)
    out = DiffSegmenter(DiffSegmenterConfig(**TINY, overlong="truncate"), host=HOST).predict(batch)[0]
    assert out.info["truncated"] == 1 and out.info["target_lost"] == 1


def test_caption_provider_hook(val_samples, monkeypatch):
    batch = _batch(val_samples[:1], ["the red circle"])
    with pytest.raises(UserError, match="no installed plugin implements refbench_caption"):
        DiffSegmenter(DiffSegmenterConfig(**TINY, captions=True), host=HOST).predict(batch)
    monkeypatch.syspath_prepend(str(REPO / "tests" / "plugins"))
    monkeypatch.setenv("REFBENCH_PLUGINS", "rb_captioner")
    host = PluginHost()  # the caller's host is the one the method asks for captions
    captioned = DiffSegmenter(DiffSegmenterConfig(**TINY, captions=True), host=host)
    plain = DiffSegmenter(DiffSegmenterConfig(**TINY), host=host)
    assert "captions:rb_captioner" in captioned.weights_fingerprint()
    a, b = captioned.predict(batch)[0], plain.predict(batch)[0]
    assert not np.array_equal(a.scores, b.scores)


@pytest.mark.slow
def test_cli_end_to_end_referring_and_semantic(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "ref"
    result = run_cli("run", "--methods", "diffsegmenter,diffsegmenter_ab", "--data-root", str(shapes_root),
                     "--set", "*.backbone=tiny", "--set", "*.device=cpu", "--limit", "6",
                     "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    res = json.loads((out / "results.json").read_text())["results"]
    for name in ("diffsegmenter", "diffsegmenter_ab"):
        assert res[name]["n"] == 6 and len(res[name]["sweep"]) == 19
        assert res[name]["config"]["backbone"] == "tiny"
    assert res["diffsegmenter_ab"]["config"]["alpha"] == 0.9
    assert "alpha" not in res["diffsegmenter"]["config"]
    assert res["diffsegmenter_ab"]["counts"].get("binding_applied", 0) >= 1
    sem = tmp_path / "sem"
    result = run_cli("run", "--methods", "diffsegmenter", "--dataset", "refshapes-semantic",
                     "--data-root", str(shapes_root), "--set", "*.backbone=tiny", "--limit", "4",
                     "--out", str(sem), "--no-progress")
    assert result.returncode == 0, result.stderr
    semantic = json.loads((sem / "results.json").read_text())["results"]["diffsegmenter"]
    assert 0 < semantic["semantic"]["mIoU"] < 1 and len(semantic["semantic_sweep"]) == 19


@pytest.mark.slow
def test_bad_weights_length(shapes_root: Path, tmp_path: Path):
    result = run_cli("run", "--methods", "diffsegmenter", "--data-root", str(shapes_root),
                     "--set", "*.backbone=tiny", "--set", "diffsegmenter.weights=0.5,0.5",
                     "--limit", "1", "--out", str(tmp_path), "--no-progress")
    assert_user_error(result, "weights has 2 entries", "4 resolutions")


def test_caption_ing_word_is_read_with_the_noun(val_samples):
    """The original's caption scripts read the next token too when the caption's next word ends
    in -ing ("a photograph of cat++ sitting ...")."""
    sample = val_samples[0]
    with_ing = DiffSegmenter(DiffSegmenterConfig(**TINY, captions=True), host=HOST)
    without = DiffSegmenter(DiffSegmenterConfig(**TINY, captions=True, ing_next=False), host=HOST)
    plan = with_ing._plan("the red circle sitting on a mat", sample)
    words = plan.alignment.word_spans
    sitting = next(span for span in words if plan.prompt[span[0]:span[1]] == "sitting")
    circle = next(span for span in words if plan.prompt[span[0]:span[1]] == "circle")
    assert plan.target_positions == plan.alignment.positions(*circle) + plan.alignment.positions(*sitting)
    assert plan.info["ing_next"] == 1
    assert without._plan("the red circle sitting on a mat", sample).target_positions == \
        plan.alignment.positions(*circle)
    # not a caption, or no -ing word next: the noun alone
    assert with_ing._plan("the red circle on a mat", sample).target_positions == \
        plan.alignment.positions(*circle)
    assert "ing_next" not in DiffSegmenter(DiffSegmenterConfig(**TINY), host=HOST)._plan(
        "the red circle sitting on a mat", sample).info


def test_max_queries_drops_the_finest_layers_as_the_original(val_samples):
    """tiny's finest attention is 16 x 16 = 256 queries: a cap of 64 keeps 8 x 8 and coarser,
    which is what a 4096 cap does to an SD 2.1-v at 768 (96 x 96)."""
    batch = _batch(val_samples[:2])
    full = DiffSegmenter(DiffSegmenterConfig(**TINY), host=HOST)
    capped = DiffSegmenter(DiffSegmenterConfig(**TINY, max_queries=64), host=HOST)
    assert full._finest_kept(16) == 16 and capped._finest_kept(16) == 8
    a, b = full.predict(batch), capped.predict(batch)
    assert all(not np.allclose(x.scores, y.scores) for x, y in zip(a, b))
    assert DiffSegmenter(DiffSegmenterConfig(**TINY, max_queries=0), host=HOST)._finest_kept(16) == 16
