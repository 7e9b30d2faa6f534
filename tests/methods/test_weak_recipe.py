"""The LUAD-HistoSeg recipe configs hold the paper's training settings (Han et al. 2022, via issue 15)."""

from pathlib import Path

import pytest

from pathseg.engine.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "weak"
LUAD_TRAIN_PATCHES = 16678  # LUAD-HistoSeg readme: "The total number of patches in the training set is 16,678"


def test_phase2_recipe_uses_the_papers_learning_rate():
    cfg = load_config(CONFIGS / "luad_histoseg_phase2.yaml")
    assert cfg.optim.lr == pytest.approx(7e-2)
    assert load_config(CONFIGS / "synthetic_phase2.yaml").optim.lr == pytest.approx(0.01)  # CPU configs unchanged


def test_phase1_recipe_trains_30_epochs_and_keeps_the_best_validation():
    cfg = load_config(CONFIGS / "luad_histoseg_phase1.yaml")
    epoch = LUAD_TRAIN_PATCHES // cfg.data.batch_size
    assert cfg.data.batch_size == 20 and cfg.trainer.val_every == epoch
    assert cfg.trainer.max_steps == 30 * epoch
    assert cfg.method.params.get("epoch_steps") is None  # PDA's epoch is the loop's epoch, one pass of patches
    assert cfg.data.val_split == "val"  # chosen on the validation split, never on test
    assert (cfg.trainer.best_metric, cfg.trainer.best_mode) == ("val/mIoU", "max")


def test_phase2_recipe_keeps_the_best_validation():
    cfg = load_config(CONFIGS / "luad_histoseg_phase2.yaml")
    assert cfg.data.val_split == "val" and (cfg.trainer.best_metric, cfg.trainer.best_mode) == ("val/mIoU", "max")
