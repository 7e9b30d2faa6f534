"""DSF-WSI (Wang et al., dual-branch self-supervised framework): context + target branches, CTFM, dense SimSiam.

Two encoders with separate weights: the context branch f_c sees low-resolution patches, the target
branch f_t (the SegModel's encoder, the one exported for fine-tuning) sees the m high-resolution
patches inside each context patch (m = 16 at 4:1, 4 at 2:1). For each ResNet stage s = 1..4:

    L_c,s  = SimSiam(g_c,s, h_c,s) on the two views of the context patches
    L_t,s  = SimSiam(g_t,s, h_t,s) on the two views of the target patches
    CTFM   : t_s (B, m, C_s) --masked jigsaw--> shuffle the m targets (a fresh permutation per sample
             and view, the same for every stage), zero a fraction ``mask_ratio`` of them,
             u_s = φ_s([c_s ; t_s,π(1)·k_1 ; ... ; t_s,π(m)·k_m])    φ_s: Linear((1+m)C_s, C_s) + BN + ReLU
    L_fu,s = SimSiam(g_fu,s, h_fu,s) on (u_s of view 1, u_s of view 2)

    L = L_DSL,c + L_DSL,t + L_DSL,fu,      L_DSL,· = Σ_s w_s L_·,s,   w = (0.1, 0.4, 0.7, 1.0)

That is 12 projectors and 12 predictors. Choices the paper leaves open (documented here): stage
features are global-average-pooled before the heads; a masked target is zeroed (no learned token); the
fusion φ_s reduces the concatenation to the stage width so the fusion heads match the others.

Shape: batch ``{"context": (B, 2, 3, Sc, Sc), "targets": (B, 2, m, 3, St, St)}`` (two views each).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pathseg.errors import ConfigError
from pathseg.losses.simsiam import STAGE_WEIGHTS, dense_simsiam_loss
from pathseg.methods.base import METHODS
from pathseg.methods.ssl.simsiam import NUM_STAGES, SimSiamHead, SSLMethod, pooled_stages


def draw_jigsaw(batch: int, m: int, mask_ratio: float, *, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A random permutation of the m targets and a keep mask with exactly ``round(mask_ratio * m)`` zeros, per sample.

    Shape: -> perm (batch, m) int64, keep (batch, m) float (1 = kept, 0 = masked).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    perm = torch.stack([torch.randperm(m, generator=generator) for _ in range(batch)]).to(device)
    n_mask = int(round(mask_ratio * m))
    keep = torch.ones(batch, m)
    for b in range(batch):
        keep[b, torch.randperm(m, generator=generator)[:n_mask]] = 0.0
    return perm, keep.to(device)


def masked_jigsaw(targets: torch.Tensor, perm: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """out[b, k] = targets[b, perm[b, k]] * keep[b, k]: shuffle the target features as whole vectors, then mask slots.

    Shape: targets (B, m, C), perm (B, m) int64, keep (B, m) -> (B, m, C).
    """
    idx = perm.unsqueeze(-1).expand_as(targets)
    return targets.gather(1, idx) * keep.unsqueeze(-1).to(targets.dtype)


class CTFM(nn.Module):
    """Context-Target Fusion Module of one stage: [context ; jigsawed targets] -> fused feature of width C.

    Shape: context (B, C), targets (B, m, C), perm/keep (B, m) -> (B, C).
    """

    def __init__(self, channels: int, m: int) -> None:
        super().__init__()
        self.m = m
        self.fuse = nn.Sequential(nn.Linear((1 + m) * channels, channels, bias=False), nn.BatchNorm1d(channels),
                                  nn.ReLU(inplace=True))

    def forward(self, context: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        jig = masked_jigsaw(targets, perm, keep)
        return self.fuse(torch.cat([context.unsqueeze(1), jig], 1).flatten(1))


@METHODS.register("dsf")
class DSF(SSLMethod):
    """Dual-branch DSF-WSI pretraining; the exported weights are the target branch (``model.encoder``)."""

    def __init__(self, model, *, targets_per_context: int = 16, mask_ratio: float = 0.5,
                 stage_weights: Sequence[float] = STAGE_WEIGHTS, fusion: bool = True, **kw: Any) -> None:
        super().__init__(model, **kw)
        from pathseg.models import create_model

        if len(stage_weights) != NUM_STAGES:
            raise ConfigError(f"stage_weights: expected {NUM_STAGES} weights (one per ResNet stage), got {list(stage_weights)}")
        self.m, self.mask_ratio, self.use_fusion = int(targets_per_context), float(mask_ratio), bool(fusion)
        self.stage_weights = [float(w) for w in stage_weights]
        draw_jigsaw(1, self.m, self.mask_ratio)  # validates mask_ratio now, not at the first step
        # a second encoder of the same registered name, with its own (freshly initialised) weights
        self.context_encoder = create_model("unet", encoder=model.encoder_name, num_classes=1).encoder
        if self.use_channels_last:
            self.context_encoder.to(memory_format=torch.channels_last)
        chans = self.stage_channels()
        self.context_heads = nn.ModuleList([SimSiamHead(c) for c in chans])
        self.target_heads = nn.ModuleList([SimSiamHead(c) for c in chans])
        self.fusion_heads = nn.ModuleList([SimSiamHead(c) for c in chans]) if self.use_fusion else nn.ModuleList()
        self.ctfm = nn.ModuleList([CTFM(c, self.m) for c in chans]) if self.use_fusion else nn.ModuleList()

    def extra_encoders(self) -> dict[str, nn.Module]:
        return {"context": self.context_encoder}

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        ctx, tg = batch["context"], batch["targets"]  # (B, 2, 3, Sc, Sc), (B, 2, m, 3, St, St)
        B, _, m = tg.shape[:3]
        if m != self.m:
            raise ConfigError(f"dsf: batches carry {m} targets per context but targets_per_context={self.m}; "
                              "set method.params.targets_per_context to data.options.pair.per_side ** 2")
        fc = [pooled_stages(self.context_encoder, self._fmt(ctx[:, v])) for v in (0, 1)]
        ft = [pooled_stages(self.model.encoder, self._fmt(tg[:, v].flatten(0, 1))) for v in (0, 1)]
        l_c, _ = dense_simsiam_loss([h(a, b) for h, a, b in zip(self.context_heads, fc[0], fc[1])], self.stage_weights)
        l_t, _ = dense_simsiam_loss([h(a, b) for h, a, b in zip(self.target_heads, ft[0], ft[1])], self.stage_weights)
        out = {"loss/context": l_c, "loss/target": l_t}
        total = l_c + l_t
        if self.use_fusion:
            fused = []
            for v in (0, 1):
                perm, keep = draw_jigsaw(B, m, self.mask_ratio, device=tg.device)
                fused.append([f(c, t.view(B, m, -1), perm, keep) for f, c, t in zip(self.ctfm, fc[v], ft[v])])
            l_fu, _ = dense_simsiam_loss([h(a, b) for h, a, b in zip(self.fusion_heads, fused[0], fused[1])],
                                         self.stage_weights)
            out["loss/fusion"] = l_fu
            total = total + l_fu
        return {"loss": total, **out}
