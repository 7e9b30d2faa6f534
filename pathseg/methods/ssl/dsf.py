"""DSF-WSI (Wang et al., dual-branch self-supervised framework): context + target branches, CTFM, dense SimSiam.

Two encoders with separate weights: the context branch f_c sees low-resolution patches, the target
branch f_t (the SegModel's encoder, the one exported for fine-tuning) sees the m high-resolution
patches inside each context patch (m = 16 at 4:1, 4 at 2:1). For each ResNet stage s = 1..4:

    L_c,s  = SimSiam(g_c,s, h_c,s) on the two views of the context patches
    L_t,s  = SimSiam(g_t,s, h_t,s) on the two views of the target patches
    CTFM   : t_s (B, m, C_s) --masked jigsaw--> keep n_keep = floor(m (1 - mask_ratio)) of the m targets,
             in a random order (a fresh draw per sample and view, the same for every stage), and
             u_s = [c_s ; t_s,k_1 ; ... ; t_s,k_n_keep]               width (1 + n_keep) C_s
    L_fu,s = SimSiam(g_fu,s, h_fu,s) on (u_s of view 1, u_s of view 2); g_fu,s, h_fu,s have width (1 + n_keep) C_s

    L = L_DSL,c + L_DSL,t + L_DSL,fu,      L_DSL,· = Σ_s w_s L_·,s,   w = (0.1, 0.4, 0.7, 1.0)

That is 12 projectors and 12 predictors. As published (and in the authors' code), the concatenation goes
straight into the fusion projector. ``ctfm_narrow=True`` first narrows it to C_s with Linear + BN + ReLU
(an extra layer the paper does not have; the fusion heads are then of width C_s, which costs far less
memory at m = 16). Ablations of the fusion: ``jigsaw=False`` keeps the n_keep targets in their spatial
order (masking only); ``mask_ratio=0`` keeps all m, shuffled (jigsaw only); ``fusion=False`` drops the
fusion branch. Stage features are global-average-pooled before the heads.

Shape: batch ``{"context": (B, 2, 3, Sc, Sc), "targets": (B, 2, m, 3, St, St)}`` (two views each).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pathseg.errors import ConfigError
from pathseg.losses.simsiam import STAGE_WEIGHTS
from pathseg.methods.base import METHODS
from pathseg.methods.ssl.simsiam import NUM_STAGES, SimSiamHead, SSLMethod, head_terms, pooled_stages


def kept_targets(m: int, mask_ratio: float) -> int:
    """n_keep = floor(m · (1 - mask_ratio)): how many of the m targets the fusion keeps (the authors' rounding)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n = int(m * (1.0 - mask_ratio) + 1e-9)
    if n < 1:
        raise ConfigError(f"mask_ratio={mask_ratio} keeps no target of {m}; use a smaller mask_ratio "
                          f"(at most {1 - 1 / m:.3f} keeps one)")
    return n


def draw_jigsaw(batch: int, m: int, mask_ratio: float, *, jigsaw: bool = True,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Which targets the fusion keeps, slot by slot: n_keep of the m, per sample.

    ``jigsaw=True``: the first n_keep of a random permutation (random subset, random order). ``jigsaw=False``:
    the same random subset in increasing index order (masking only).

    Shape: -> (batch, n_keep) int64, n_keep = :func:`kept_targets`.
    """
    n = kept_targets(m, mask_ratio)
    idx = torch.stack([torch.randperm(m, generator=generator)[:n] for _ in range(batch)])
    if not jigsaw:
        idx = idx.sort(1).values
    return idx.to(device)


def masked_jigsaw(targets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """out[b, k] = targets[b, idx[b, k]]: the kept target features, as whole vectors, in slot order.

    Shape: targets (B, m, C), idx (B, n_keep) int64 -> (B, n_keep, C).
    """
    return targets.gather(1, idx.unsqueeze(-1).expand(-1, -1, targets.shape[-1]))


class CTFM(nn.Module):
    """Context-Target Fusion Module of one stage: [context ; kept targets] flattened, width (1 + n_keep) C.

    ``narrow=True`` adds Linear((1 + n_keep) C, C) + BN + ReLU (not in the paper). ``in_channels`` is the
    concatenation's width, ``out_channels`` what the fusion head receives.

    Shape: context (B, C), targets (B, m, C), idx (B, n_keep) -> (B, out_channels).
    """

    def __init__(self, channels: int, n_keep: int, *, narrow: bool = False) -> None:
        super().__init__()
        self.n_keep = int(n_keep)
        self.in_channels = (1 + self.n_keep) * channels
        self.narrow = (nn.Sequential(nn.Linear(self.in_channels, channels, bias=False), nn.BatchNorm1d(channels),
                                     nn.ReLU(inplace=True)) if narrow else nn.Identity())
        self.out_channels = channels if narrow else self.in_channels

    def forward(self, context: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        kept = masked_jigsaw(targets, idx)
        return self.narrow(torch.cat([context.unsqueeze(1), kept], 1).flatten(1))


@METHODS.register("dsf")
class DSF(SSLMethod):
    """Dual-branch DSF-WSI pretraining; exports the target branch (``model.encoder``) and the context branch.

    Args (beyond :class:`SSLMethod`'s): ``targets_per_context`` m; ``mask_ratio`` (0.5, the paper's);
    ``stage_weights``; ``fusion`` (the CTFM branch on/off); ``jigsaw`` (False: masking only);
    ``ctfm_narrow`` (False, as published: see the module docstring).
    """

    def __init__(self, model, *, targets_per_context: int = 16, mask_ratio: float = 0.5,
                 stage_weights: Sequence[float] = STAGE_WEIGHTS, fusion: bool = True, jigsaw: bool = True,
                 ctfm_narrow: bool = False, **kw: Any) -> None:
        super().__init__(model, **kw)
        from pathseg.models import create_model

        if len(stage_weights) != NUM_STAGES:
            raise ConfigError(f"stage_weights: expected {NUM_STAGES} weights (one per ResNet stage), got {list(stage_weights)}")
        self.m, self.mask_ratio, self.use_fusion = int(targets_per_context), float(mask_ratio), bool(fusion)
        self.jigsaw = bool(jigsaw)
        self.stage_weights = [float(w) for w in stage_weights]
        self.n_keep = kept_targets(self.m, self.mask_ratio)  # validates mask_ratio now, not at the first step
        # a second encoder of the same registered name, with its own (freshly initialised) weights
        self.context_encoder = create_model("unet", encoder=model.encoder_name, num_classes=1).encoder
        if self.use_channels_last:
            self.context_encoder.to(memory_format=torch.channels_last)
        chans = self.stage_channels()
        self.context_heads = nn.ModuleList([SimSiamHead(c) for c in chans])
        self.target_heads = nn.ModuleList([SimSiamHead(c) for c in chans])
        self.ctfm = (nn.ModuleList([CTFM(c, self.n_keep, narrow=ctfm_narrow) for c in chans]) if self.use_fusion
                     else nn.ModuleList())
        self.fusion_heads = nn.ModuleList([SimSiamHead(f.out_channels) for f in self.ctfm])

    def encoders(self) -> dict[str, nn.Module]:
        return {"target": self.model.encoder, "context": self.context_encoder}

    def head_batches(self, pairs: int, m: int) -> dict[str, int]:
        out = {"context": pairs, "target": pairs * m}
        if self.use_fusion:
            out["fusion"] = pairs
        return out

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        ctx, tg = batch["context"], batch["targets"]  # (B, 2, 3, Sc, Sc), (B, 2, m, 3, St, St)
        B, _, m = tg.shape[:3]
        if m != self.m:
            raise ConfigError(f"dsf: batches carry {m} targets per context but targets_per_context={self.m}; "
                              "set method.params.targets_per_context to data.options.pair.per_side ** 2")
        fc = [pooled_stages(self.context_encoder, self._fmt(ctx[:, v])) for v in (0, 1)]
        ft = [pooled_stages(self.model.encoder, self._fmt(tg[:, v].flatten(0, 1))) for v in (0, 1)]
        out = head_terms("context", [h(a, b) for h, a, b in zip(self.context_heads, fc[0], fc[1])], self.stage_weights)
        out.update(head_terms("target", [h(a, b) for h, a, b in zip(self.target_heads, ft[0], ft[1])],
                              self.stage_weights))
        total = out["loss/context"] + out["loss/target"]
        if self.use_fusion:
            fused = []
            for v in (0, 1):
                idx = draw_jigsaw(B, m, self.mask_ratio, jigsaw=self.jigsaw, device=tg.device)
                fused.append([f(c, t.view(B, m, -1), idx) for f, c, t in zip(self.ctfm, fc[v], ft[v])])
            out.update(head_terms("fusion", [h(a, b) for h, a, b in zip(self.fusion_heads, fused[0], fused[1])],
                                  self.stage_weights))
            total = total + out["loss/fusion"]
        return {"loss": total, **out}
