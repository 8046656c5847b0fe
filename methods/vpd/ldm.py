"""VPD's own checkpoint format, read and written.

VPD saves ``torch.save({"model": VPDRefer.state_dict(), "optimizer": ..., "epoch": ..., "args":
argparse.Namespace(...), "lr_scheduler": ...})`` with CompVis (ldm) key names:
``unet.unet.diffusion_model.*`` (the UNet), ``encoder_vq.encoder.*``, ``encoder_vq.quant_conv.*``,
``encoder_vq.post_quant_conv.*`` (the VAE without its decoder), ``text_adapter.fc.*``,
``classifier.*`` (SimpleDecoding) and ``gamma``.

Reading: ``torch.load(weights_only=True)`` with exactly ``argparse.Namespace`` allowed besides
tensors and plain containers, so a file that names anything else is refused without running it.
The UNet and VAE keys are converted by diffusers' own single-file converters
(``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``), after renaming VPD's prefixes
to the ones those expect; every key of the file must be used and every weight of the network
given, else a one-line error names the key. The UNet and VAE encoder come from the checkpoint
(a fine-tuned UNet differs from the backbone's); the text encoder and tokenizer from the backbone.

Writing (``export_vpd_checkpoint``) renames diffusers' keys to ldm's by ldm's block numbering;
reading the file back through the converters gives the same network (a test checks it).
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from refbench.diffusion.families import require_family
from refbench.errors import UserError

UNET = "unet.unet.diffusion_model."
VAE = "encoder_vq."
VAE_PARTS = ("encoder.", "quant_conv.", "post_quant_conv.")
OWN = ("text_adapter.", "classifier.", "gamma")  # VPD's names are refbench's names
LDM_UNET = "model.diffusion_model."  # the prefixes diffusers' converters look for
LDM_VAE = "first_stage_model."


def read_vpd_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The ``model`` state dict and the ``args`` of a VPD checkpoint, read without unpickling
    anything but tensors, containers and VPD's argparse.Namespace."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: give the path of VPD's .pth file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        what = str(error).splitlines()[0][:200]
        raise UserError(f"refused to load {path}: it holds more than tensors and VPD's args "
                        f"({what}); a genuine VPD checkpoint does not") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise UserError(f"checkpoint {path} cannot be read ({str(error).splitlines()[0][:160]}): "
                        f"re-download it") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise UserError(f"{path} is not a VPD checkpoint: it has no 'model' state dict "
                        f"(VPD saves {{'model': ..., 'args': ...}})")
    args = data.get("args")
    return data["model"], vars(args) if isinstance(args, argparse.Namespace) else {}


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _peft_key(key: str, target: set[str]) -> str:
    """A diffusers key as it is named in a UNet that LoRA (peft) has wrapped."""
    if key in target:
        return key
    head, _, leaf = key.rpartition(".")
    wrapped = f"{head}.base_layer.{leaf}"
    return wrapped if wrapped in target else key


def load_vpd_checkpoint(path: Path, net: Any) -> None:
    """Load VPD's checkpoint at ``path`` into a VPD network (UNet, VAE encoder, adapter, gamma,
    decoder), checking every key and the token length."""
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    require_family("VPD's released checkpoints", net.backbone.family, ("sd1",),
                   "they hold a Stable Diffusion 1.5 UNet and VAE in CompVis's layout")
    state, args = read_vpd_checkpoint(path)
    trained_t = args.get("token_length")
    if trained_t is not None and int(trained_t) != net.config.token_length:
        raise UserError(f"checkpoint {path} was trained with token_length {trained_t}: pass "
                        f"--set <method>.token_length={trained_t}")
    unknown = [k for k in state if not k.startswith((UNET, VAE, *OWN))]
    if unknown:
        raise UserError(f"checkpoint {path} has an unexpected key {unknown[0]!r} (and "
                        f"{len(unknown) - 1} more): not VPD's VPDRefer state dict")
    unet_src = {LDM_UNET + k[len(UNET):]: v for k, v in state.items() if k.startswith(UNET)}
    vae_src = {LDM_VAE + k[len(VAE):]: v for k, v in state.items() if k.startswith(VAE)}
    stray = [k for k in vae_src if not k[len(LDM_VAE):].startswith(VAE_PARTS)]
    if stray:
        raise UserError(f"checkpoint {path} has an unexpected key {VAE + stray[0][len(LDM_VAE):]!r}: "
                        f"VPD keeps only the VAE's encoder, quant_conv and post_quant_conv")
    unet_new = convert_ldm_unet_checkpoint(unet_src, dict(net.unet.config))
    vae_new = convert_ldm_vae_checkpoint(vae_src, dict(net.vae.config))
    used = {_storage(v) for v in (*unet_new.values(), *vae_new.values())}
    for source, prefix, strip in ((unet_src, UNET, LDM_UNET), (vae_src, VAE, LDM_VAE)):
        for key, value in source.items():
            if _storage(value) not in used:
                raise UserError(f"checkpoint {path}: key {prefix + key[len(strip):]!r} does not "
                                f"belong to this backbone's UNet or VAE (renamed, or another "
                                f"architecture): check the checkpoint and --set <method>.backbone")
    unet_target = {k for k in net.unet.state_dict() if "lora_" not in k}
    unet_new = {_peft_key(k, unet_target): v for k, v in unet_new.items()}
    vae_target = {k for k in net.vae.state_dict() if k.startswith(VAE_PARTS)}
    config = dict(net.unet.config)
    for target, new, part in ((unet_target, unet_new, "UNet"), (vae_target, vae_new, "VAE encoder")):
        extra = sorted(set(new) - target)
        if extra:
            name = (UNET + ldm_unet_key(extra[0].replace(".base_layer", ""), config) if part == "UNet"
                    else VAE + ldm_vae_key(extra[0]))
            raise UserError(f"checkpoint {path}: key {name!r} has no place in this backbone's "
                            f"{part} (renamed, or another architecture)")
        missing = sorted(target - set(new))
        if missing:
            raise UserError(f"checkpoint {path} lacks the {part}'s weight {missing[0]!r} (and "
                            f"{len(missing) - 1} more): a key is missing or renamed")
    own = {k: v for k, v in state.items() if k.startswith(OWN)}
    expected = {k: v for k, v in net.state_dict().items() if k.startswith(OWN)}
    for key in sorted(set(expected) - set(own)):
        raise UserError(f"checkpoint {path} lacks {key!r}: it is not a checkpoint of this "
                        f"variant (VPD's has a text adapter and gamma; F-VPD's has none)")
    for key in sorted(set(own) - set(expected)):
        raise UserError(f"checkpoint {path} has an unexpected key {key!r} for this variant")
    for key, value in own.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            hint = (" (the decoder's input width fixes token_length: 40 for RefCOCO, 77 for G-Ref)"
                    if key.startswith("classifier.conv1_") else "")
            raise UserError(f"checkpoint {path}: {key} has shape {tuple(value.shape)}, this network's "
                            f"is {tuple(expected[key].shape)}{hint}")
    _shapes_fit(path, net.unet.state_dict(), unet_new, "UNet")
    _shapes_fit(path, net.vae.state_dict(), vae_new, "VAE")
    dtype = next(net.unet.parameters()).dtype
    net.unet.load_state_dict({k: v.to(dtype) for k, v in unet_new.items()}, strict=False)
    net.vae.load_state_dict({k: v.to(dtype) for k, v in vae_new.items()}, strict=False)
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in own.items()}, strict=False)


def _shapes_fit(path: Path, target: dict[str, torch.Tensor], new: dict[str, torch.Tensor], part: str) -> None:
    for key, value in new.items():
        if value.numel() != target[key].numel():
            raise UserError(f"checkpoint {path}: the {part}'s {key} has shape {tuple(value.shape)}, "
                            f"this backbone's {tuple(target[key].shape)}: another architecture")


# -- writing ------------------------------------------------------------------------------------
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def ldm_unet_key(key: str, config: dict[str, Any]) -> str:
    """A diffusers UNet key in ldm's numbering (input_blocks, middle_block, output_blocks)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if key in top:
        return top[key]
    n = config["layers_per_block"] + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * n + layer
        return (f"input_blocks.{index}.0.{_rename(rest, _RESNET)}" if kind == "resnets"
                else f"input_blocks.{index}.1.{rest}")
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * n + n - 1}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, layer, rest = m[1], int(m[2]), m[3]
        return (f"middle_block.{2 * layer}.{_rename(rest, _RESNET)}" if kind == "resnets"
                else f"middle_block.1.{rest}")
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * n + layer
        return (f"output_blocks.{index}.0.{_rename(rest, _RESNET)}" if kind == "resnets"
                else f"output_blocks.{index}.1.{rest}")
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        has_attention = "CrossAttn" in config["up_block_types"][block]
        return f"output_blocks.{block * n + n - 1}.{2 if has_attention else 1}.conv.{m[2]}"
    raise UserError(f"no ldm name for UNet key {key!r}: this backbone's architecture is not one "
                    f"VPD's format can hold")


def ldm_vae_key(key: str) -> str:
    """A diffusers VAE encoder key in ldm's naming."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], _VAE_RESNET)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"encoder\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.mid.block_{int(m[1]) + 1}.{_rename(m[2], _VAE_RESNET)}"
    if m := re.fullmatch(r"encoder\.mid_block\.attentions\.0\.(.+)", key):
        return f"encoder.mid.attn_1.{_rename(m[1], _VAE_ATTENTION)}"
    for new, old in (("encoder.conv_norm_out.", "encoder.norm_out."), ("encoder.conv_in.", "encoder.conv_in."),
                     ("encoder.conv_out.", "encoder.conv_out.")):
        if key.startswith(new):
            return old + key[len(new):]
    raise UserError(f"no ldm name for VAE key {key!r}")


def export_vpd_checkpoint(net: Any, path: Path, args: dict[str, Any] | None = None) -> Path:
    """Write ``net`` (a VPD network, its trained weights loaded) as VPD's ``.pth``."""
    if getattr(net, "lora", False):
        raise UserError("a LoRA-VPD network has no place in VPD's format (VPD trains the whole "
                        "UNet): export vpd or f_vpd checkpoints")
    require_family("export to VPD's format", net.backbone.family, ("sd1",),
                   "VPD's format holds a Stable Diffusion 1.x UNet in CompVis's layout")
    model: dict[str, torch.Tensor] = {}
    config = dict(net.unet.config)
    for key, value in net.unet.state_dict().items():
        model[UNET + ldm_unet_key(key, config)] = value.detach().cpu().clone()
    for key, value in net.vae.state_dict().items():
        if key.startswith(VAE_PARTS):
            ldm = ldm_vae_key(key)
            if ".attn_1." in ldm and value.ndim == 2:  # ldm's attention projections are 1x1 convs
                value = value[:, :, None, None]
            model[VAE + ldm] = value.detach().cpu().clone()
    for key, value in net.state_dict().items():
        if key.startswith(OWN):
            model[key] = value.detach().cpu().clone()
    namespace = argparse.Namespace(token_length=net.config.token_length,
                                   img_size=net.size, **(args or {}))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "args": namespace, "epoch": 0}, path)
    return path
