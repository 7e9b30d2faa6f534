"""Training modes for few labels, layer-wise learning-rate decay and activation checkpointing for a ViT.

Modes (``create_model(..., mode=...)``, config ``model.options.mode``):

=========== =======================================================================================
full        every parameter trains
frozen      the ViT is frozen; the pyramid neck, the stem, the decoder and the classifier train
last_n      the last ``trainable_blocks`` blocks and the final norm train, the rest of the ViT is frozen
lora        LoRA adapters (the ``peft`` library) on the attention projections ``attn.qkv`` and
            ``attn.proj`` of every block train; every pretrained ViT weight stays bit-identical
=========== =======================================================================================

The neck, stem, decoder and classifier train in every mode. :func:`param_groups_lld` gives an optimiser
layer-wise decayed learning rates (BEiT/MAE fine-tuning: block i of d gets ``lr * decay ** (d + 1 - (i + 1))``,
the embeddings ``lr * decay ** (d + 1)``, everything after the ViT ``lr``). :func:`merge_lora` folds the
adapters into the weights (for export) and restores the checkpoint's own key names.

Example:
    >>> vit = build_vit(resolve_spec("vit_small_patch16_224"))
    >>> apply_mode(vit, "lora", lora_rank=4)
    >>> sorted({n.split(".")[-3] for n, p in vit.named_parameters() if p.requires_grad})
    ['lora_A', 'lora_B']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pathseg.errors import ConfigError

MODES = ("full", "frozen", "last_n", "lora")
LORA_TARGETS = ("qkv", "proj")
"""Attention projections adapted by LoRA, matched as ``blocks.N.attn.<target>`` (never ``patch_embed.proj``)."""


def _peft():
    try:
        import peft
    except ImportError as e:  # pragma: no cover - peft is a dependency; this guards a broken environment
        raise ConfigError("mode='lora' needs the peft library: pip install peft") from e
    return peft


def apply_mode(vit: nn.Module, mode: str = "full", *, trainable_blocks: int = 4, lora_rank: int = 8,
               lora_alpha: float | None = None, lora_dropout: float = 0.0,
               lora_targets: Sequence[str] = LORA_TARGETS) -> nn.Module:
    """Set which of a timm ViT's parameters train (in place; LoRA layers are injected by peft).

    Args:
        mode: one of ``MODES``.
        trainable_blocks: with ``last_n``, how many final blocks train.
        lora_rank, lora_alpha, lora_dropout: LoRA's r, alpha (default 2r) and dropout.
        lora_targets: attention submodules to adapt.

    Returns:
        ``vit`` (modified in place).
    """
    if mode not in MODES:
        from pathseg.registry import did_you_mean

        raise ConfigError(f"mode {mode!r}: expected one of {', '.join(MODES)}.{did_you_mean(mode, list(MODES))}")
    depth = len(vit.blocks)
    if mode == "full":
        vit.requires_grad_(True)
    elif mode == "frozen":
        vit.requires_grad_(False)
    elif mode == "last_n":
        if not 1 <= int(trainable_blocks) <= depth:
            raise ConfigError(f"trainable_blocks {trainable_blocks}: expected 1..{depth} for this {depth}-block ViT")
        vit.requires_grad_(False)
        for blk in list(vit.blocks)[depth - int(trainable_blocks):]:
            blk.requires_grad_(True)
        vit.norm.requires_grad_(True)
    else:
        if int(lora_rank) < 1:
            raise ConfigError(f"lora_rank {lora_rank}: expected >= 1")
        peft = _peft()
        targets = "|".join(re.escape(t) for t in lora_targets)
        config = peft.LoraConfig(r=int(lora_rank), lora_alpha=float(lora_alpha if lora_alpha is not None
                                                                      else 2 * int(lora_rank)),
                                 lora_dropout=float(lora_dropout), bias="none",
                                 target_modules=rf"blocks\.\d+\.attn\.({targets})")
        vit.requires_grad_(False)
        peft.inject_adapter_in_model(config, vit)
        for name, p in vit.named_parameters():
            p.requires_grad_("lora_" in name)
    vit.pathseg_mode = mode
    return vit


def lora_parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA adapter tensors of a module (name -> tensor)."""
    return {n: p for n, p in module.named_parameters() if "lora_" in n}


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base weight and put the plain layer back (in place).

    Afterwards the ViT has its checkpoint's key names again and no peft layers (for ONNX export or
    for sharing the fine-tuned encoder as a plain timm state dict).
    """
    peft = _peft()
    lora_layer = peft.tuners.lora.LoraLayer
    for name, child in list(module.named_modules()):
        if isinstance(child, lora_layer):
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, child.get_base_layer())
    return module


def set_checkpointing(vit: nn.Module, enable: bool = True) -> None:
    """Activation checkpointing for the ViT's blocks (recomputed in backward: less memory, ~30% more time)."""
    vit.set_grad_checkpointing(enable)


_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_EMBED = ("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre", "mask_token")


def vit_layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for what follows (final norm)."""
    m = _BLOCK.match(name)
    if m is not None:
        return int(m.group(1)) + 1
    if name.startswith(_EMBED):
        return 0
    return depth + 1


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in _EMBED or "ls1" in name or "ls2" in name


def param_groups_lld(model: nn.Module, lr: float, decay: float = 0.75,
                     weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimiser parameter groups with layer-wise learning-rate decay over every ViT inside ``model``.

    A parameter of a ViT with d blocks at layer id l (:func:`vit_layer_id`) gets ``lr * decay ** (d + 1 - l)``;
    parameters outside the ViT (neck, decoder, classifier) get ``lr``. Biases, norms, tokens, position
    embeddings and layer scales get no weight decay. Frozen parameters are left out.

    Each group has ``params``, ``lr``, ``weight_decay``, ``lr_scale`` and ``layer_id``; torch optimisers keep
    the extra keys, and an LR schedule that multiplies ``initial_lr`` (LambdaLR) keeps the ratios.

    Example:
        >>> groups = param_groups_lld(model, lr=1e-4, decay=0.75, weight_decay=0.05)
        >>> opt = torch.optim.AdamW(groups)
    """
    if not 0 < decay <= 1:
        raise ConfigError(f"layer decay {decay}: expected 0 < decay <= 1 (1 = no decay)")
    vits: dict[str, int] = {}
    for mname, mod in model.named_modules():
        if hasattr(mod, "blocks") and hasattr(mod, "patch_embed") and hasattr(mod, "forward_intermediates"):
            vits[f"{mname}." if mname else ""] = len(mod.blocks)
    groups: dict[tuple[int, int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefix = next((pre for pre in vits if name.startswith(pre)), None)
        if prefix is None:
            depth, layer, scale = 0, 1, 1.0
        else:
            depth = vits[prefix]
            layer = vit_layer_id(name[len(prefix):], depth)
            scale = decay ** (depth + 1 - layer)
        nd = _no_decay(name, p)
        key = (depth, layer, nd)
        if key not in groups:
            groups[key] = {"params": [], "lr": lr * scale, "weight_decay": 0.0 if nd else weight_decay,
                           "lr_scale": scale, "layer_id": layer, "names": []}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return sorted(groups.values(), key=lambda g: (g["lr_scale"], g["weight_decay"]))


__all__ = ["MODES", "LORA_TARGETS", "apply_mode", "lora_parameters", "merge_lora", "set_checkpointing",
           "param_groups_lld", "vit_layer_id"]
