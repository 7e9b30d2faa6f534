"""Loading a pathology ViT's published weights: from a local file or the hub, in the checkpoint's own key names.

Key layouts read (:attr:`VitSpec.key_format`):

``timm``       timm ``VisionTransformer`` names (UNI, UNI2-h, Virchow2, H-optimus-0, any timm ViT).
``conch``      CONCH's whole CoCa checkpoint; the image trunk ``visual.trunk.*`` is timm, the rest is left out.
``hf_vit``     transformers ``ViTModel`` (Phikon): ``embeddings.*``, ``encoder.layer.N.attention.attention.query``
               ... (transformers 4.x, the layout the checkpoint was saved in) or ``layers.N.attention.q_proj`` ...
               (transformers 5); optional ``vit.`` prefix; separate q/k/v are concatenated into timm's ``qkv``.
``hf_dinov2``  transformers ``Dinov2Model`` (Phikon-v2): as above with ``norm1``/``norm2``, ``mlp.fc1``/``fc2``
               and ``layer_scale1.lambda1``; ``mask_token`` (a pretraining-only token) is left out.

Containers (``state_dict``, ``model``, ``teacher``) and prefixes (``module.``, ``model.``, ``backbone.``) are
unwrapped. A position embedding saved for another grid is resampled (timm's ``resample_abs_pos_embed``). Any
other tensor that does not fit is an error naming the keys, never a silent partial load.

Example:
    >>> spec = resolve_spec("phikon")
    >>> vit = build_vit(spec)
    >>> load_vit_weights(vit, spec, "/data/weights/phikon/model.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathseg.errors import WeightsError
from pathseg.models.vit.specs import VitSpec

CONTAINER_KEYS = ("state_dict", "model", "teacher", "module")
STRIP_PREFIXES = ("module.", "model.", "backbone.", "encoder.vit.")
DROPPED_PREFIXES = ("head.", "fc_norm.")  # a classification head, unused by the dense encoder (num_classes=0)


def where_to_get(spec: VitSpec) -> str:
    """A sentence naming where the weights come from and how to pass them."""
    where = spec.source or (f"huggingface.co/{spec.hub_id}" if spec.hub_id else "the model's publisher")
    file = spec.hub_files[-1] if spec.hub_files else "pytorch_model.bin"
    return (f"Get them from {where}, then pass the file: model.weights=/path/to/{file} "
            f"(create_model(..., weights='/path/to/{file}')), or weights='hub' when online.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch file, unwrapped from a checkpoint container."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot read weights ({type(e).__name__}: {e}); expected a torch or "
                           f"safetensors state dict") from e
    for _ in range(3):
        inner = next((state[k] for k in CONTAINER_KEYS if isinstance(state, Mapping) and
                      isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors (found {type(state).__name__})")
    return dict(state)


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for p in STRIP_PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


# transformers key (4.x checkpoint layout, then 5.x in-memory layout) -> timm key, per block N
_HF_BLOCK = {
    "hf_vit": [
        (r"layernorm_before\.", "norm1."), (r"layernorm_after\.", "norm2."),
        (r"attention\.output\.dense\.", "attn.proj."), (r"attention\.o_proj\.", "attn.proj."),
        (r"intermediate\.dense\.", "mlp.fc1."), (r"output\.dense\.", "mlp.fc2."),
        (r"mlp\.fc1\.", "mlp.fc1."), (r"mlp\.fc2\.", "mlp.fc2."),
    ],
    "hf_dinov2": [
        (r"norm1\.", "norm1."), (r"norm2\.", "norm2."),
        (r"attention\.output\.dense\.", "attn.proj."), (r"attention\.o_proj\.", "attn.proj."),
        (r"layer_scale1\.lambda1$", "ls1.gamma"), (r"layer_scale2\.lambda1$", "ls2.gamma"),
        (r"mlp\.fc1\.", "mlp.fc1."), (r"mlp\.fc2\.", "mlp.fc2."),
        (r"mlp\.weights_in\.", "mlp.fc1."), (r"mlp\.weights_out\.", "mlp.fc2."),
    ],
}
_HF_QKV = re.compile(r"attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$")
_HF_LAYER = re.compile(r"^(?:encoder\.layer|layers|encoder\.layers)\.(\d+)\.(.*)$")
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.register_tokens": "reg_token",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_UNUSED = ("embeddings.mask_token", "pooler.")  # pretraining-only token; ViTModel's pooler (unused)


def convert_hf_state_dict(state: Mapping[str, torch.Tensor], key_format: str) -> tuple[dict[str, torch.Tensor],
                                                                                       list[str]]:
    """transformers ViTModel / Dinov2Model tensors -> timm VisionTransformer tensors.

    Returns (timm state dict, keys left out on purpose). Keys that match no rule are kept unchanged,
    so that loading reports them as unexpected.
    """
    rules = _HF_BLOCK[key_format]
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    dropped: list[str] = []
    for key, val in state.items():
        for p in ("vit.", "dinov2."):
            if key.startswith(p):
                key = key[len(p):]
        if key.startswith(_HF_UNUSED):
            dropped.append(key)
            continue
        if key in _HF_TOP:
            out[_HF_TOP[key]] = val
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            out[key] = val
            continue
        i, rest = int(m.group(1)), m.group(2)
        q = _HF_QKV.match(rest)
        if q is not None:
            part = (q.group(1) or q.group(2))[0]  # q / k / v
            qkv.setdefault((i, q.group(3)), {})[part] = val
            continue
        for pattern, repl in rules:
            if re.match(pattern, rest):
                out[f"blocks.{i}.{re.sub(pattern, repl, rest, count=1)}"] = val
                break
        else:
            out[key] = val
    for (i, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise WeightsError(f"block {i}: attention {kind} has only {sorted(parts)} of query/key/value")
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out, dropped


def to_timm_state_dict(state: Mapping[str, torch.Tensor], spec: VitSpec) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A checkpoint in ``spec.key_format`` as timm keys; returns (state dict, keys left out on purpose)."""
    state = _strip(dict(state))
    if spec.key_format in _HF_BLOCK:
        return convert_hf_state_dict(state, spec.key_format)
    dropped: list[str] = []
    if spec.key_format == "conch":
        trunk = "visual.trunk."
        if any(k.startswith(trunk) for k in state):
            dropped = [k for k in state if not k.startswith(trunk)]
            state = {k[len(trunk):]: v for k, v in state.items() if k.startswith(trunk)}
    elif spec.key_format != "timm":
        raise WeightsError(f"{spec.name}: unknown key format {spec.key_format!r}")
    for k in [k for k in state if k.startswith(DROPPED_PREFIXES)]:
        dropped.append(k)
        del state[k]
    return state, dropped


def load_vit_state_dict(vit: nn.Module, state: Mapping[str, torch.Tensor], spec: VitSpec,
                        origin: str = "weights") -> list[str]:
    """Load a checkpoint (its own key names) into ``vit`` exactly: every tensor of the ViT, nothing else.

    Returns the keys left out on purpose (text tower, mask token, pooler, classifier head).

    Raises:
        WeightsError: missing, unexpected or misshapen tensors, listed by name.
    """
    from timm.layers import resample_abs_pos_embed

    converted, dropped = to_timm_state_dict(state, spec)
    own = vit.state_dict()
    pos = converted.get("pos_embed")
    if pos is not None and "pos_embed" in own and pos.shape != own["pos_embed"].shape and pos.device.type != "meta":
        prefix = 0 if getattr(vit, "no_embed_class", False) else int(getattr(vit, "num_prefix_tokens", 1))
        grid = tuple(int(g) for g in vit.patch_embed.grid_size)
        converted["pos_embed"] = resample_abs_pos_embed(pos, new_size=grid, num_prefix_tokens=prefix, verbose=False)
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    shapes = sorted(k for k in set(own) & set(converted) if tuple(own[k].shape) != tuple(converted[k].shape))
    if missing or unexpected or shapes:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [f"{len(missing)} missing ({show(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({show(unexpected)})" if unexpected else "",
                 "shape mismatch: " + "; ".join(f"{k} {tuple(converted[k].shape)} vs {tuple(own[k].shape)}"
                                                for k in shapes[:3]) if shapes else ""]
        raise WeightsError(f"{origin}: does not fit encoder {spec.name!r} ({spec.arch}): "
                           + ", ".join(p for p in parts if p)
                           + f". Is it the {spec.name} checkpoint? " + where_to_get(spec))
    vit.load_state_dict(converted, strict=True, assign=next(iter(own.values())).device.type == "meta")
    return dropped


def _hub_file(spec: VitSpec, hub_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    errors = []
    for fname in spec.hub_files:
        try:
            return Path(hf_hub_download(hub_id, filename=fname))
        except Exception as e:  # offline, gated, not found: many exception types
            errors.append(f"{fname}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise WeightsError(f"{spec.name}: could not get the weights from the hub repository {hub_id} "
                       f"({'; '.join(errors)}). Offline, or without accepted access? " + where_to_get(spec))


def load_vit_weights(vit: nn.Module, spec: VitSpec, weights: str | Path) -> list[str]:
    """Load ``weights`` into ``vit``: a local file, ``"hub"`` (the spec's repository) or ``"hf-hub:owner/name"``.

    Raises:
        WeightsError: the file is missing or unreadable, the hub cannot be reached, or the tensors do not fit;
            the message says where to get the weights and how to pass them.
    """
    text = str(weights)
    if text == "hub" or text.startswith(("hf-hub:", "hf_hub:")):
        hub_id = text.split(":", 1)[1] if ":" in text else spec.hub_id
        if hub_id is None:
            raise WeightsError(f"{spec.name}: no hub repository is known for this encoder; pass a local file "
                               f"(model.weights=/path/to/pytorch_model.bin) or weights='hf-hub:owner/name'")
        path = _hub_file(spec, hub_id)
    else:
        path = Path(text).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found for encoder {spec.name!r}. " + where_to_get(spec))
    return load_vit_state_dict(vit, read_state_dict(path), spec, origin=str(path))


__all__ = ["read_state_dict", "convert_hf_state_dict", "to_timm_state_dict", "load_vit_state_dict",
           "load_vit_weights", "where_to_get"]
