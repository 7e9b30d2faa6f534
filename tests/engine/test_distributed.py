"""Data-parallel training: the methods' own state under 2 CPU processes (gloo) against one process.

Reference for every multi-process check: the same computation in one process on the whole batch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pathseg.engine.distributed import (AllReduceBatchNorm, AllReduceBatchNormSync, GlobalBatchSampler, ShardSampler,
                                        all_gather_cat, all_reduce_sum)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------
# samplers: pure functions of (seed, epoch, rank, world)
# ---------------------------------------------------------------------------------------------------

def test_global_batches_are_the_same_under_any_world_size():
    one = list(GlobalBatchSampler(10, 6, 4, seed=3))
    ranks = [list(GlobalBatchSampler(10, 3, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    for b in range(4):  # global batch b = rank 0's batch b then rank 1's batch b
        assert one[6 * b:6 * b + 6] == ranks[0][3 * b:3 * b + 3] + ranks[1][3 * b:3 * b + 3]
    assert len(ranks[0]) == len(GlobalBatchSampler(10, 3, 4, rank=0, world_size=2)) == 12
    s = GlobalBatchSampler(10, 6, 4, seed=3)
    s.set_epoch(1)
    assert list(s) != one  # a new epoch draws new samples
    assert list(GlobalBatchSampler(10, 6, 4, seed=3, stream=1)) != one  # and the unlabelled stream differs


def test_shard_sampler_covers_each_item_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))
    assert [len(ShardSampler(7, r, 3)) for r in range(3)] == [len(s) for s in shards] == [3, 2, 2]


def test_collectives_are_identities_in_one_process():
    t = torch.arange(6.0).view(3, 2)
    assert torch.equal(all_gather_cat(t), t)
    a = np.arange(4).reshape(2, 2)
    assert np.array_equal(all_reduce_sum(a), a)
    bn = nn.BatchNorm2d(3)
    bn_sync = AllReduceBatchNormSync().apply(nn.Sequential(nn.BatchNorm2d(3)))[0]
    x = torch.randn(4, 3, 5, 5)
    assert torch.allclose(bn(x), bn_sync(x))


# ---------------------------------------------------------------------------------------------------
# collectives in two real processes
# ---------------------------------------------------------------------------------------------------

def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from pathseg.losses.contrastive import MemoryBank
    from pathseg.metrics import SegmentationMetrics

    _init(rank, world, port)
    res: dict = {}
    # memory bank: rank r pushes 3 + r features filled with r + 1 (unequal sizes on purpose)
    bank = MemoryBank(dim=4, size=16)
    bank.push(torch.full((3 + rank, 4), float(rank + 1)), torch.full((3 + rank,), rank))
    f, y = bank.contents()
    res["bank_features"] = f[:, 0].tolist()
    res["bank_labels"] = y.tolist()
    # confusion matrix: each rank scores its shard of 5 fixed images
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 3, (5, 8, 8), generator=g)
    preds = torch.randint(0, 3, (5, 8, 8), generator=g)
    m = SegmentationMetrics(3)
    for i in ShardSampler(5, rank, world):
        m.update(targets[i].numpy(), preds[i].numpy())
    m.cm = all_reduce_sum(m.cm)
    res["cm"] = m.cm.tolist()
    # batch norm over the global batch: rank r holds images [2r, 2r + 2) of a fixed batch of 4
    torch.manual_seed(1)
    x = torch.randn(4, 3, 6, 6) * 2 + 1
    w = torch.randn(4, 3, 6, 6)
    bn = AllReduceBatchNormSync().apply(nn.Sequential(nn.BatchNorm2d(3)))[0]
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    sl = slice(2 * rank, 2 * rank + 2)
    y = bn(x[sl])
    (y * w[sl]).sum().backward()
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)  # what DDP does with parameter gradients (up to its 1/world scaling)
    res["bn_out"] = y.tolist()
    res["bn_grads"] = grads.tolist()
    res["bn_running"] = torch.cat([bn.running_mean, bn.running_var]).tolist()
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    port = 29500 + os.getpid() % 1000
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_memory_bank_holds_features_of_both_ranks(two_ranks):
    for res in two_ranks:  # every rank holds the same bank: rank 0's 3 rows, then rank 1's 4
        assert res["bank_features"] == [1.0] * 3 + [2.0] * 4
        assert res["bank_labels"] == [0] * 3 + [1] * 4


def test_confusion_matrix_is_summed_across_ranks(two_ranks):
    from pathseg.metrics import SegmentationMetrics

    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 3, (5, 8, 8), generator=g)
    preds = torch.randint(0, 3, (5, 8, 8), generator=g)
    whole = SegmentationMetrics(3)
    whole.update(targets.numpy(), preds.numpy())
    for res in two_ranks:
        assert np.array_equal(np.array(res["cm"]), whole.cm)


def test_batch_norm_uses_the_global_batch(two_ranks):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 6, 6) * 2 + 1
    w = torch.randn(4, 3, 6, 6)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    y = bn(x)
    (y * w).sum().backward()
    out = torch.cat([torch.tensor(two_ranks[r]["bn_out"]) for r in range(2)])
    assert torch.allclose(out, y, atol=1e-5)
    for res in two_ranks:
        assert torch.allclose(torch.tensor(res["bn_grads"]), torch.cat([bn.weight.grad, bn.bias.grad]), atol=1e-4)
        assert torch.allclose(torch.tensor(res["bn_running"]), torch.cat([bn.running_mean, bn.running_var]),
                              atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# `pathseg train` with 2 processes against 1 process, same global batch
# ---------------------------------------------------------------------------------------------------

def _split(tmp: Path) -> Path:
    from pathseg.data.splits import make_split, write_split
    from pathseg.data.synth import SyntheticHE

    train = SyntheticHE(n_images=8, size=64, task="nuclei", split="train")
    test = SyntheticHE(n_images=3, size=64, task="nuclei", split="test")
    path = tmp / "1-2_seed0.json"
    write_split(path, {"dataset": "synthetic", **make_split(train.ids, "1/2", seed=0), "test": test.ids})
    return path


def _train(out: Path, method: str, global_batch: int, world: int, steps: int, extra: list[str]) -> None:
    b = global_batch // world
    args = [
        "train", "data.dataset=synthetic", "data.options={n_images: 8, size: 64, task: nuclei}",
        "data.train_transforms=[{name: random_crop, size: 48}, {name: flip}]",
        f"data.batch_size={b}", f"data.unlabeled_batch_size={b}", "model.name=unet", "model.encoder=resnet18",
        "optim.name=sgd", "optim.lr=0.01", f"method.name={method}", f"trainer.max_steps={steps}",
        f"trainer.val_every={steps}", "trainer.log_every=1", "trainer.threads=1", "trainer.progress=false",
        "trainer.accelerator=cpu", "trainer.sync_batchnorm=true", f"trainer.out={out}", *extra,
    ]
    if world > 1:
        args += ["--devices", str(world), "--strategy", "ddp"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "pathseg.cli.main", *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _curve(out: Path, key: str = "train/loss") -> dict[int, float]:
    rows = csv.DictReader(io.StringIO((out / "logs" / "metrics.csv").read_text()))
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def _final(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())[-1]


@pytest.mark.slow
def test_ddp_supervised_matches_one_process_and_resumes_on_other_device_counts(tmp_path):
    """Tolerance: per-step loss within 1e-3 relative (float summation order differs), metrics within 1e-3.

    SGD: Adam divides each gradient by its own magnitude, so float noise in near-zero gradients becomes
    full-size steps and the runs drift apart (0.1% by step 3 here) although the computation is the same."""
    one, two = tmp_path / "one", tmp_path / "two"
    _train(one, "supervised", 4, 1, 4, [])
    _train(two, "supervised", 4, 2, 4, [])
    a, b = _curve(one), _curve(two)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-3), (s, a[s], b[s])
    fa, fb = _final(one), _final(two)
    for k in ("mIoU", "Dice", "accuracy"):
        assert fb[k] == pytest.approx(fa[k], abs=1e-3)
    # checkpoints once (rank 0), and the 2-process run resumes in 1 process (and back again) to more steps
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["last.ckpt"]  # trainer.keep_last: 1
    _train(two, "supervised", 4, 1, 6, ["trainer.val_every=2"])
    assert _final(two)["step"] == 6
    assert max(_curve(two)) == 5 and (two / "model.ckpt").is_file()


@pytest.mark.slow
def test_ddp_crcfp_matches_one_process(tmp_path):
    """CRCFP under 2 processes. Data, augmentations and batch norm are those of the global batch, but the
    methods' own random draws (crop pairs, CCT perturbations, negatives) are per process, so: L_sup is
    the same to 1e-3 relative during the warm-up; afterwards the total loss stays within 10% and the
    metrics within 0.05."""
    split = _split(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    extra = [f"data.split_file={split}", "method.params={warmup_steps: 2, bank_size: 64, crop_negatives: 16}"]
    _train(one, "crcfp", 4, 1, 4, extra)
    _train(two, "crcfp", 4, 2, 4, extra)
    sa, sb = _curve(one, "train/loss/sup"), _curve(two, "train/loss/sup")
    for s in (0, 1):
        assert sb[s] == pytest.approx(sa[s], rel=1e-3)
    # after the warm-up: L_sup and L_ent within 10%. Not the total: L_cont is a mean over the *active* anchors
    # (CAC's normalisation): at this scale a step has either no active anchor (0) or a few (O(1)), depending on
    # the crop pairs, which each process draws for itself (measured: 0, 0 in one process; 0.19, 0.97 in two)
    for term in ("train/loss/sup", "train/loss/ent"):
        a, b = _curve(one, term), _curve(two, term)
        for s in (2, 3):
            assert b[s] == pytest.approx(a[s], rel=0.1), term
    assert all(math.isfinite(v) for v in _curve(two, "train/loss/cont").values())
    assert _curve(two, "train/loss/cross")[3] > 0 and _curve(two, "train/loss/ent")[3] > 0  # after the warm-up
    fa, fb = _final(one), _final(two)
    for k in ("mIoU", "accuracy"):
        assert fb[k] == pytest.approx(fa[k], abs=0.05)
