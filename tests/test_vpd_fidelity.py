"""VPD against its network built a second way (tests/reference/vpd.py, ldm-structured, written
from VPD's code): a checkpoint in VPD's released format, with random weights, loads through
diffusers' converters and gives that network's output; bad checkpoints are one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.vpd.model import VPD, FrozenVPD, VPDConfig
from refbench.data.images import load_rgb
from refbench.data.refer import ReferDataset
from refbench.diffusion.backbone import load_backbone
from refbench.diffusion.prompts import encode
from refbench.errors import UserError
from refbench.method import Batch, sample_seed
from refbench.plugins import PluginHost
from tests.conftest import assert_user_error, run_cli
from tests.reference.vpd import VPDRefer

HOST = PluginHost()
SIZE, T = 128, 40


@pytest.fixture(scope="module")
def reference() -> VPDRefer:
    backbone = load_backbone("tiny", "cpu", host=HOST)
    torch.manual_seed(3)
    net = VPDRefer(dict(backbone.unet.config), dict(backbone.vae.config), T,
                   backbone.text_encoder.config.hidden_size, SIZE)
    with torch.no_grad():  # trained-looking statistics and a non-trivial adapter
        for module in net.classifier.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
        net.gamma.fill_(0.5)
    return net.eval()


def _save(net: VPDRefer, path: Path, **args) -> Path:
    torch.save({"model": net.state_dict(), "optimizer": {"state": {}, "param_groups": []},
                "epoch": 3, "args": argparse.Namespace(token_length=T, img_size=SIZE, **args)}, path)
    return path


@pytest.fixture(scope="module")
def vpd_pth(reference: VPDRefer, tmp_path_factory) -> Path:
    return _save(reference, tmp_path_factory.mktemp("vpd") / "vpd_ris_tiny.pth")


def test_a_released_format_checkpoint_reproduces_vpds_network(reference, vpd_pth, shapes_root: Path):
    samples = ReferDataset(shapes_root, "refshapes").samples("val")[:6]
    images = [load_rgb(s.image_path) for s in samples]
    method = VPD(VPDConfig(backbone="tiny", device="cpu", image_size=SIZE, token_length=T,
                           checkpoint=str(vpd_pth)), host=HOST)
    ours = method.predict(Batch(samples, images, [sample_seed(0, s.sample_id) for s in samples], size=SIZE))
    bb = method.net.backbone
    with torch.no_grad():
        for sample, image, prediction in zip(samples, images, ours):
            embedding = encode(bb.text_encoder, bb.tokenizer, [sample.expression], max_length=T)
            theirs = reference(image, embedding).numpy()
            assert np.abs(prediction.scores - theirs).max() <= 1e-3, sample.sample_id
            assert np.array_equal(prediction.scores >= 0.5, theirs >= 0.5)
    # the UNet and VAE came from the checkpoint, not from the backbone
    fresh = load_backbone("tiny", "cpu", host=HOST)
    assert not torch.equal(method.net.unet.conv_in.weight, fresh.unet.conv_in.weight)
    assert method.weights_fingerprint() != VPD.network(VPDConfig(backbone="tiny", device="cpu"), HOST).backbone.fingerprint


@pytest.mark.slow
def test_the_command_line_evaluates_a_released_checkpoint(vpd_pth, shapes_root: Path, tmp_path: Path):
    backbone_dir = load_backbone("tiny", "cpu", host=HOST).save(tmp_path / "tiny-dir")
    result = run_cli("run", "--methods", "vpd", "--set", f"vpd.checkpoint={vpd_pth}", "--set",
                     f"vpd.backbone={backbone_dir}", "--set", "vpd.token_length=40", "--set",
                     f"vpd.image_size={SIZE}", "--set", "vpd.device=cpu", "--data-root", str(shapes_root),
                     "--limit", "3", "--out", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "vpd" in result.stdout


@pytest.mark.parametrize("damage, fragment", [
    ("rename", "attn2.to_kk.weight' has no place in this backbone's UNet"),
    ("drop", "lacks the UNet's weight"),
    ("extra", "unexpected key 'rogue.weight'"),
    ("drop_adapter", "lacks 'text_adapter.fc.0.weight'"),
    ("token_length", "trained with token_length 77"),
])
def test_a_damaged_checkpoint_is_a_one_line_error(reference, tmp_path: Path, damage: str, fragment: str):
    state = dict(reference.state_dict())
    args = {}
    if damage == "rename":
        key = next(k for k in state if "attn2.to_k" in k)
        state[key.replace("to_k", "to_kk")] = state.pop(key)
    elif damage == "drop":
        state.pop(next(k for k in state if k.endswith("middle_block.0.in_layers.2.weight")))
    elif damage == "extra":
        state["rogue.weight"] = torch.zeros(1)
    elif damage == "drop_adapter":
        state.pop("text_adapter.fc.0.weight")
    path = tmp_path / "bad.pth"
    torch.save({"model": state, "args": argparse.Namespace(
        token_length=77 if damage == "token_length" else T, **args)}, path)
    with pytest.raises(UserError, match=fragment):
        VPD(VPDConfig(backbone="tiny", device="cpu", image_size=SIZE, token_length=T,
                      checkpoint=str(path)), host=HOST)


def test_a_wrong_token_length_without_args_names_the_decoder(reference, tmp_path: Path):
    path = tmp_path / "no-args.pth"
    torch.save({"model": reference.state_dict()}, path)
    with pytest.raises(UserError, match="fixes token_length"):
        VPD(VPDConfig(backbone="tiny", device="cpu", image_size=SIZE, token_length=77,
                      checkpoint=str(path)), host=HOST)


@pytest.mark.slow
def test_a_pickle_with_code_is_refused_without_running_it(tmp_path: Path, shapes_root: Path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": Path("/")}, path)  # a global that is not VPD's Namespace
    result = run_cli("run", "--methods", "vpd", "--set", f"vpd.checkpoint={path}", "--set",
                     "vpd.backbone=tiny", "--set", "vpd.device=cpu", "--data-root", str(shapes_root),
                     "--limit", "1", "--out", str(tmp_path / "run"), "--no-progress")
    assert_user_error(result, "refused to load", "more than tensors")


def test_refbench_checkpoints_export_to_vpds_format_and_back(reference, tmp_path: Path, shapes_root: Path):
    from methods.vpd.ldm import export_vpd_checkpoint

    samples = ReferDataset(shapes_root, "refshapes").samples("val")[:3]
    batch = Batch(samples, [load_rgb(s.image_path) for s in samples], [0, 1, 2], size=SIZE)
    for cls in (VPD, FrozenVPD):
        torch.manual_seed(0)
        net = cls.network(VPDConfig(backbone="tiny", device="cpu", image_size=SIZE), HOST)
        with torch.no_grad():
            for p in [*net.unet.parameters(), *net.classifier.parameters()]:
                p.add_(0.01 * torch.randn_like(p))
        net.eval()
        path = export_vpd_checkpoint(net, tmp_path / f"{cls.method_name}.pth")
        loaded = cls(VPDConfig(backbone="tiny", device="cpu", image_size=SIZE, checkpoint=str(path)),
                     host=HOST)
        for a, b in zip(net.predict(batch), loaded.predict(batch)):
            assert np.array_equal(a.scores, b.scores)
