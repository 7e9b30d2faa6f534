"""Every method and the slide engine take a ViT encoder: one training step of each method's own config with a
tiny ViT (gradients reach the ViT), and a ViT checkpoint predicts a slide through torch and ONNX Runtime alike."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pathseg.engine.config import load_config
from pathseg.engine.train import build_method

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = "model.options={vit_kwargs: {depth: 4, embed_dim: 64, num_heads: 2}}"
VIT = "vit_small_patch16_224"


def _batch(kind: str, k: int, g: torch.Generator) -> dict:
    img = torch.rand(2, 3, 64, 64, generator=g)
    mask = torch.randint(0, k, (2, 64, 64), generator=g)
    if kind == "semi":
        return {"labeled": {"image": img, "mask": mask}, "unlabeled": {"image": torch.rand(2, 3, 64, 64, generator=g)}}
    if kind == "classifier":
        return {"image": img, "labels": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])[:, :k]}
    if kind == "mlps":  # three pseudo-mask layers, packed as the phase-2 data does
        from pathseg.methods.weak.pseudo import pack_masks

        m = mask.numpy()
        return {"image": img, "mask": torch.from_numpy(pack_masks(m, m, m))}
    if kind == "segcls":
        return {"image": img, "mask": torch.cat([mask[:1], torch.full_like(mask[1:], 255)]),
                "labels": torch.eye(k)[[1, 2]]}
    return {"image": img, "mask": mask}


CASES = [
    ("semi/crcfp.yaml", "semi", ["background", "nucleus"]),
    ("weak/glas_phase1.yaml", "classifier", ["background", "benign", "malignant"]),
    ("weak/glas_phase2.yaml", "mlps", ["background", "benign", "malignant"]),
    ("segcls/glas.yaml", "segcls", ["background", "benign", "malignant"]),
    ("distill/nuclei_unet.yaml", "plain", ["background", "nucleus"]),
]


@pytest.mark.parametrize("config, kind, names", CASES, ids=[c[0] for c in CASES])
def test_each_method_trains_a_step_on_a_vit_encoder(config, kind, names):
    cfg = load_config(CONFIGS / config, [f"model.encoder={VIT}", TINY])
    torch.manual_seed(0)
    m = build_method(cfg, names, None)
    m._trainer = SimpleNamespace(global_step=getattr(m, "warmup_steps", 0), max_steps=10, current_epoch=0)
    vit = [p for n, p in m.model.named_parameters() if ".vit." in n and "blocks" in n]
    assert vit, "the model has no ViT"
    out = m.training_losses(_batch(kind, len(names), torch.Generator().manual_seed(0)))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vit)


def test_a_vit_checkpoint_predicts_a_slide_with_torch_and_onnx_alike(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
    from wsi_fixtures import synthetic_slide

    from pathseg.models.checkpoint import load_model, save_model_checkpoint
    from pathseg.inference.backends import load_backend
    from pathseg.inference.predictor import PredictConfig, SlidePredictor
    from pathseg.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", encoder=VIT, num_classes=2, vit_kwargs={"depth": 4, "embed_dim": 64, "num_heads": 2})
    ckpt = save_model_checkpoint(tmp_path / "vit.ckpt", model, ["background", "tissue"], mpp=2.0)
    assert load_model(ckpt)[0].encoder_name == VIT
    slide = synthetic_slide(tmp_path, 1024, seed=3, truth=False)[0]
    cfg = PredictConfig(tile=128, overlap=0.0)
    recs = {b: SlidePredictor(load_backend(ckpt, backend=b, tile=128), cfg).predict(slide, tmp_path / b)
            for b in ("torch", "onnx")}
    assert all(r["status"] == "done" for r in recs.values())
    import tifffile

    maps = {}
    for b, r in recs.items():
        with tifffile.TiffFile(r["outputs"]["labels"]) as tif:
            maps[b] = tif.series[0].levels[0].asarray()
    assert maps["torch"].shape == (256, 256)
    assert (maps["torch"] == maps["onnx"]).mean() > 0.999
    assert np.unique(maps["torch"]).size >= 1


def test_optim_layer_decay_gives_each_vit_block_its_published_rate():
    cfg = load_config(CONFIGS / "monuseg_supervised.yaml", [f"model.encoder={VIT}", TINY, "optim.name=adamw",
                                                            "optim.lr=0.001", "optim.layer_decay=0.5"])
    m = build_method(cfg, ["background", "nucleus"], None)
    m._trainer = SimpleNamespace(max_steps=10)
    opt = m.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(m.named_parameters())
    d = 4  # blocks of the tiny ViT: block i is layer i + 1, the decoder is at the full rate
    for i in range(d):
        p = next(v for k, v in named.items() if f"vit.blocks.{i}." in k and k.endswith("qkv.weight"))
        assert lr_of[id(p)] == pytest.approx(0.001 * 0.5 ** (d + 1 - (i + 1)))
    head = named["model.classifier.weight"]
    assert lr_of[id(head)] == pytest.approx(0.001)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in m.parameters())
