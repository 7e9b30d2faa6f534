"""The cell classifiers trained by the one driver, against independent computations: the driver's run equals a
plain Adam loop over the very batches its loader yields (same optimiser, same data order -> same weights), the
``cell_bank`` dataset's targets and splits equal what the bank says, the distillation loss equals its formula,
and the scores equal the metrics of the predictions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathseg.data.cell_bank import CellBank, CellBankDataset

NAMES = ["background", "tumour", "lymphocyte"]


def _bank(n=40, size=16, seed=0) -> CellBank:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    # a class signal the classifier can pick up: the mean brightness differs by class
    patches = (rng.integers(0, 120, (n, 1, size, size, 3)) + 60 * truth[:, None, None, None, None]).astype(np.uint8)
    weak = truth.copy()
    weak[::5] = (weak[::5] + 1) % 3
    expert = np.where(np.arange(n) % 2 == 0, truth, -1)
    return CellBank(patches=patches, class_names=NAMES, scales=[1.0], image_ids=np.array(["img"] * n),
                    nucleus_ids=np.arange(1, n + 1), centroids=np.zeros((n, 2)), weak=weak, expert=expert,
                    truth=truth)


@pytest.fixture
def bank_file(tmp_path):
    return _bank().save(tmp_path / "bank.npz")


def test_the_dataset_serves_what_the_bank_holds(tmp_path, bank_file):
    bank = CellBank.load(bank_file)
    ds = CellBankDataset("train", bank=str(bank_file), labels="expert")
    assert len(ds) == int((bank.expert >= 0).sum())  # unknown (-1) cells are not targets
    s = ds[1]
    assert s["image"].shape == (16, 16, 3) and np.array_equal(s["image"], bank.patches[2, 0])
    assert s["labels"].tolist() == np.eye(3)[bank.expert[2]].tolist() and s["mask"] is None
    np.save(tmp_path / "pick.npy", np.array([3, 4, 6]))  # 3 has no expert label: left out
    ds = CellBankDataset("train", bank=str(bank_file), labels="expert", cells=str(tmp_path / "pick.npy"))
    assert ds.index.tolist() == [4, 6]
    ho = CellBankDataset("holdout", bank=str(bank_file), labels="weak", holdout=str(tmp_path / "pick.npy"))
    assert ho.index.tolist() == [3, 4, 6] and ho[0]["labels"].argmax() == bank.weak[3]
    # teacher targets: softmax(z / T), computed here by hand
    z = np.random.default_rng(1).normal(size=(len(bank), 3)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    ds = CellBankDataset("train", bank=str(bank_file), labels="teacher", targets=str(tmp_path / "z.npy"),
                         temperature=4.0)
    e = np.exp(z[7] / 4.0)
    assert len(ds) == len(bank) and np.allclose(ds[7]["labels"], e / e.sum(), atol=1e-6)
    ev = CellBankDataset("eval", bank=str(bank_file), eval_bank=str(bank_file))
    assert len(ev) == len(bank) and ev[5]["labels"].argmax() == bank.truth[5]  # truth wins over expert
    from pathseg.errors import ConfigError

    with pytest.raises(ConfigError, match="splits are train, holdout, eval"):
        CellBankDataset("test", bank=str(bank_file))
    with pytest.raises(ConfigError, match="needs data.options.eval_bank"):
        CellBankDataset("eval", bank=str(bank_file))


def test_the_distillation_loss_is_t2_kl():
    from pathseg.methods.distill.method import CellClassifier
    from pathseg.models import create_model

    torch.manual_seed(0)
    model = create_model("rccnet", num_classes=3, dropout=0.0, in_size=16)
    m = CellClassifier(model, class_names=NAMES, soft=True, temperature=2.0, channels_last=False).eval()
    x = torch.randn(4, 3, 16, 16)
    q = torch.softmax(torch.randn(4, 3), 1)
    z = model(x)
    p = torch.log_softmax(z / 2.0, 1)
    want = 4.0 * (q * (q.log() - p)).sum(1).mean()  # T² · KL(q || softmax(z / T)), by hand
    got = m.training_losses({"image": x, "labels": q})
    assert torch.allclose(got["loss"], want, atol=1e-6) and "loss/kd" in got
    hard = CellClassifier(model, class_names=NAMES, channels_last=False).eval()
    y = torch.tensor([0, 2, 1, 1])
    got = hard.training_losses({"image": x, "labels": F.one_hot(y, 3).float()})
    assert torch.allclose(got["loss/ce"], F.cross_entropy(z, y), atol=1e-6)


def test_a_driver_stage_equals_a_plain_adam_loop_over_the_same_batches(tmp_path, bank_file):
    """Same initial weights (the seed), same batches (the driver's loader, read here), Adam, cross-entropy:
    the weights of the driver's model.ckpt equal those of a plain loop written here."""
    from pathseg.engine.data import build_train_loaders
    from pathseg.engine.distill import stage_config, stage_steps
    from pathseg.engine.train import train
    from pathseg.methods.distill.config import DistillConfig, StageConfig
    from pathseg.models import create_model
    from pathseg.models.checkpoint import load_model

    torch.set_num_threads(1)
    steps, bs = stage_steps(20, 2, 8)  # 2 epochs of 20 // 8 = 2 batches
    assert (steps, bs) == (4, 8)
    sc = StageConfig(model="rccnet", lr=1e-3, dropout=0.0)
    cfg = stage_config(DistillConfig(seed=3, threads=1), sc, tmp_path / "run",
                       {"bank": str(bank_file), "labels": "weak", "eval_bank": str(bank_file)},
                       steps=steps, batch_size=bs, size=16)
    res = train(cfg)
    trained, info = load_model(res["checkpoint"])
    assert info["model"] == "rccnet" and info["options"] == {"dropout": 0.0, "in_size": 16} and res["steps"] == 4

    torch.manual_seed(3)
    ref = create_model("rccnet", num_classes=3, dropout=0.0, in_size=16).train()
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    batches = list(build_train_loaders(cfg, with_unlabeled=False))
    assert len(batches) == 4 and batches[0]["image"].shape == (8, 3, 16, 16)
    for b in batches:
        loss = F.cross_entropy(ref(b["image"]), b["labels"].argmax(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    want, got = ref.state_dict(), trained.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.allclose(want[k].float(), got[k].float(), atol=1e-5), k
    # the run's validation (the eval bank) equals the metrics of the trained model's predictions
    from pathseg.methods.distill.classifier import patches_to_tensor, predict_logits_cells
    from pathseg.metrics.classification import classification_metrics

    bank = CellBank.load(bank_file)
    pred = predict_logits_cells(trained, patches_to_tensor(bank.patches[:, 0])).argmax(1).numpy()
    m = classification_metrics(bank.truth, pred, NAMES)
    assert res["metrics"]["F1"] == pytest.approx(m["F1"]) and res["metrics"]["n"] == len(bank)
    assert res["metrics"]["accuracy"] == pytest.approx(float((pred == bank.truth).mean()))


def test_run_distill_writes_loadable_models_and_resumes(tmp_path, bank_file):
    from pathseg.engine.distill import run_distill
    from pathseg.methods.distill.cells import DistillConfig, load_classifier

    torch.set_num_threads(1)
    cfg = DistillConfig.load(None, ["teacher.model=rccnet", "teacher.epochs=1", "teacher.batch_size=8",
                                    "student.epochs=1", "student.batch_size=8", "finetune.counts=[3]",
                                    "finetune.lr=[1.0e-3, 1.0e-4]", "finetune.dropout=[0.0]", "finetune.epochs=1",
                                    "finetune.batch_size=4", "finetune.holdout=0.3", "threads=1"])
    out = tmp_path / "d"
    logged: list[str] = []
    metrics = run_distill(bank_file, out, cfg, eval_bank=bank_file, log=logged.append)
    for key in ("teacher", "student", "student+finetune-3"):
        assert 0 <= metrics[key]["eval"]["F1"] <= 1 and metrics[key]["eval"]["n"] == 40, key
    ft = metrics["student+finetune-3"]
    assert ft["train_cells"] == 9 and ft["lr"] in (1e-3, 1e-4)  # 3 per class from the non-held-out expert cells
    model, info = load_classifier(out / "finetune" / "n3.pt")
    assert info["size"] == 16 and info["scale"] == 1.0 and info["class_names"] == NAMES
    assert not (out / "runs" / "teacher" / "checkpoints").exists()
    # the chosen grid point is the one with the better held-out F1, as its run's metrics say
    import json

    held = {lr: json.loads((out / "finetune" / "n3" / f"lr{lr:g}_dropout0" / "metrics.json").read_text())[-1]["F1"]
            for lr in (1e-3, 1e-4)}
    assert ft["holdout_F1"] == pytest.approx(max(held.values()))
    # the fine-tuned model's eval score equals the metrics of its own predictions
    from pathseg.methods.distill.classifier import patches_to_tensor, predict_logits_cells
    from pathseg.metrics.classification import classification_metrics

    bank = CellBank.load(bank_file)
    pred = predict_logits_cells(model, patches_to_tensor(bank.patches[:, 0])).argmax(1).numpy()
    assert ft["eval"]["F1"] == pytest.approx(classification_metrics(bank.truth, pred, NAMES)["F1"])
    logged.clear()
    run_distill(bank_file, out, cfg, eval_bank=bank_file, log=logged.append)  # resumes: nothing retrained
    assert logged == []


def test_an_old_format_classifier_says_to_retrain(tmp_path):
    from pathseg.errors import DataError
    from pathseg.methods.distill.cells import load_classifier

    torch.save({"state_dict": {}, "pathseg_cells": {"model": "rccnet", "class_names": NAMES}}, tmp_path / "old.pt")
    with pytest.raises(DataError, match="older pathseg; run `pathseg distill` again"):
        load_classifier(tmp_path / "old.pt")
