"""VPD, F-VPD and LoRA-VPD on the tiny backbone; refbench train."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.vpd.model import VPD, FrozenVPD, LoRAVPD, LoRAVPDConfig, VPDConfig
from refbench import checkpoint as ckpt
from refbench.data.images import load_rgb
from refbench.data.refer import ReferDataset
from refbench.method import Batch, sample_seed
from refbench.plugins import PluginHost
from tests.conftest import REPO, assert_user_error, run_cli

SMALL = dict(backbone="tiny", device="cpu", image_size=128)
HOST = PluginHost()
SETS = ["--set", "*.backbone=tiny", "--set", "*.device=cpu", "--set", "*.image_size=128"]


@pytest.fixture(scope="module")
def batch(shapes_root: Path) -> Batch:
    samples = ReferDataset(shapes_root, "refshapes").samples("train")[:4]
    return Batch(samples, [load_rgb(s.image_path) for s in samples],
                 [sample_seed(0, s.sample_id) for s in samples])


def _steps(net, batch, n: int, lr: float = 3e-4) -> list[float]:
    optimizer = torch.optim.AdamW(net.parameter_groups(0.01), lr=lr)
    losses = []
    for _ in range(n):
        loss = net.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(batch):
    torch.manual_seed(0)
    net = VPD.network(VPDConfig(**SMALL), HOST)
    losses = _steps(net, batch, 6)
    assert losses[-1] < losses[0] - 0.05, losses


def test_f_vpd_gives_the_unet_no_gradient(batch):
    net = FrozenVPD.network(VPDConfig(**SMALL), HOST)
    assert net.text_adapter is None and net.gamma is None
    net.loss(batch).backward()
    assert all(p.grad is None and not p.requires_grad for p in net.unet.parameters())
    assert all(p.grad is None for p in list(net.vae.parameters()) + list(net.text_encoder.parameters()))
    assert all(p.grad is not None for p in net.classifier.parameters())


def test_lora_vpd_trains_only_lora_adapter_and_decoder(batch):
    net = LoRAVPD.network(LoRAVPDConfig(**SMALL, lora_rank=4), HOST)
    names = [n for n, _ in net.trainable_named_parameters()]
    lora = [n for n in names if "lora_" in n]
    assert lora and all(("attn2.to_q" in n or "attn2.to_k" in n or "attn2.to_v" in n) for n in lora)
    assert all("lora_" in n or n.startswith(("text_adapter.", "gamma", "classifier.")) for n in names)
    net.loss(batch).backward()
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None}
    assert with_grad == set(names)
    rank = next(p for n, p in net.named_parameters() if "lora_A" in n)
    assert rank.shape[0] == 4


def test_attention_gradient_switch(batch):
    """With attn_grad off (VPD's effective behaviour, the default) the maps are detached: the
    UNet then learns only through the features."""
    on = VPD.network(VPDConfig(**SMALL, attn_grad=True), HOST)
    off = VPD.network(VPDConfig(**SMALL), HOST)
    off.load_state_dict(on.state_dict())
    for net in (on, off):
        net.loss(batch).backward()
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    grad_on = dict(on.named_parameters())[key].grad
    grad_off = dict(off.named_parameters())[key].grad
    assert not torch.allclose(grad_on, grad_off)


def test_checkpoint_round_trip_gives_identical_predictions(batch, tmp_path: Path):
    torch.manual_seed(1)
    net = LoRAVPD.network(LoRAVPDConfig(**SMALL, lora_rank=4), HOST)
    _steps(net, batch, 2)
    path = ckpt.save(tmp_path / "lora.safetensors", net.checkpoint_state(), {"method": "lora_vpd"})
    method = LoRAVPD(LoRAVPDConfig(**SMALL, lora_rank=4, checkpoint=str(path)), host=HOST)
    for a, b in zip(net.predict(batch), method.predict(batch)):
        assert np.array_equal(a.scores, b.scores)
    assert ckpt.checkpoint_hash(path) in method.weights_fingerprint()
    with pytest.raises(Exception, match="trained for lora_vpd, not vpd"):
        VPD(VPDConfig(**SMALL, checkpoint=str(path)), host=HOST)


@pytest.mark.slow
def test_train_then_run_and_resume_after_kill(shapes_root: Path, tmp_path: Path):
    out = tmp_path / "train"
    args = ["train", "--method", "f_vpd", "--data-root", str(shapes_root), "--limit-train", "8",
            "--batch-size", "4", "--epochs", "3", "--lr", "1e-3", "--limit-val", "4", "--no-progress",
            "--out", str(out), *SETS]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "refbench", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "epoch_1.safetensors"
    deadline = time.time() + 240
    while time.time() < deadline and not first.with_suffix(".json").exists():
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "train.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert "val" in summary["history"][0] and summary["history"][0]["val"]["n"] == 4
    checkpoint = summary["checkpoint"]
    run_out = tmp_path / "run"
    result = run_cli("run", "--methods", "f_vpd", "--data-root", str(shapes_root), "--limit", "4",
                     "--out", str(run_out), "--no-progress", *SETS, "--set", f"f_vpd.checkpoint={checkpoint}")
    assert result.returncode == 0, result.stderr
    res = json.loads((run_out / "results.json").read_text())["results"]["f_vpd"]
    assert res["n"] == 4 and res["config"]["checkpoint"] == checkpoint


@pytest.mark.slow
def test_trainable_method_without_checkpoint_is_refused(shapes_root: Path, tmp_path: Path):
    result = run_cli("run", "--methods", "vpd", "--data-root", str(shapes_root), "--limit", "1",
                     "--out", str(tmp_path), *SETS)
    assert_user_error(result, "vpd is trainable and has no checkpoint", "refbench train")
    missing = run_cli("run", "--methods", "vpd", "--data-root", str(shapes_root), "--limit", "1",
                      "--out", str(tmp_path), *SETS, "--set", "vpd.checkpoint=/nope.safetensors")
    assert_user_error(missing, "/nope.safetensors does not exist")
    not_trainable = run_cli("train", "--method", "diffsegmenter", "--data-root", str(shapes_root))
    assert_user_error(not_trainable, "not trainable")


def test_bf16_autocast_keeps_the_loss_within_one_percent_of_fp32(batch):
    """Mixed precision for the small GPUs of the F-VPD write-up (T4, P100, L4): on tiny, the
    bf16-autocast loss stays within 1% of fp32 (measured 7e-5 relative)."""
    torch.manual_seed(0)
    net = VPD.network(VPDConfig(**SMALL), HOST).train()
    full = float(net.loss(batch))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = float(net.loss(batch))
    assert abs(mixed - full) <= 0.01 * full, (mixed, full)


def test_gradient_checkpointing_changes_nothing_but_memory(batch):
    torch.manual_seed(0)
    plain = VPD.network(VPDConfig(**SMALL), HOST).train()
    checkpointed = VPD.network(VPDConfig(**SMALL, gradient_checkpointing=True), HOST).train()
    checkpointed.load_state_dict(plain.state_dict())
    losses = []
    for net in (plain, checkpointed):
        loss = net.loss(batch)
        loss.backward()
        losses.append(float(loss))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    key = "unet.up_blocks.1.resnets.0.conv1.weight"
    a, b = (dict(n.named_parameters())[key].grad for n in (plain, checkpointed))
    assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_the_vpd_protocol_scores_at_the_models_size(shapes_root: Path, tmp_path: Path):
    """--protocol vpd against VPD's test.py computed by hand: the box mask and the truth
    squashed to 64x64 with nearest (PIL's rule), IoU there, both empty counting 0."""
    from PIL import Image

    from refbench.data.masks import bbox, decode

    out = tmp_path / "vpd"
    result = run_cli("run", "--methods", "gt_box", "--data-root", str(shapes_root), "--protocol",
                     "vpd", "--protocol-size", "64", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    payload = json.loads((out / "results.json").read_text())
    assert payload["protocol"]["name"] == "vpd" and payload["protocol"]["size"] == 64
    ious = []
    for s in ReferDataset(shapes_root, "refshapes").samples("val"):
        x, y, w, h = bbox(s.gt)
        box = np.zeros((s.height, s.width), dtype=np.uint8)
        box[int(np.floor(y)):int(np.ceil(y + h)), int(np.floor(x)):int(np.ceil(x + w))] = 1
        squash = lambda m: np.asarray(Image.fromarray(m, mode="L").resize((64, 64), Image.Resampling.NEAREST)) > 0  # noqa: E731
        pred, gt = squash(box), squash(decode(s.gt).astype(np.uint8))
        union = (pred | gt).sum()
        ious.append(0.0 if union == 0 else (pred & gt).sum() / union)
    assert payload["results"]["gt_box"]["metrics"]["mIoU"] == pytest.approx(np.mean(ious))
    image = run_cli("run", "--methods", "gt_box", "--data-root", str(shapes_root), "--out",
                    str(out), "--no-progress")
    results = json.loads((out / "results.json").read_text())["results"]
    assert results["gt_box"]["run_key"] != payload["results"]["gt_box"]["run_key"]  # other rows
    assert image.returncode == 0
