"""Data-parallel training: the global batch sampler, test-set sharding and gathering, and a real
two-process DDP run on the CPU (gloo) against one process with the same configuration."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import smoke_config

from cprfl_lib.cpus import set_torch_threads
from cprfl_lib.train.distributed import Dist, GlobalBatchSampler, gather_predictions, shard_indices

pytestmark = pytest.mark.usefixtures("cprfl_cache")


# --- GlobalBatchSampler ------------------------------------------------------------------------------

def epoch_batches(n, batch_size, seed=0, epoch=1, rank=0, world=1, shuffle=True) -> list[list[int]]:
    sampler = GlobalBatchSampler(n, batch_size, seed, shuffle, rank, world)
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("n, batch_size, world", [(37, 8, 2), (64, 16, 2), (30, 6, 3), (10, 4, 4), (50, 8, 1), (50, 8, 2),
                                                  (51, 8, 3)])
def test_the_ranks_split_each_global_batch(n, batch_size, world):
    single = epoch_batches(n, batch_size)
    assert sorted(i for b in single for i in b) == list(range(n))  # every index once per epoch
    per_rank = [epoch_batches(n, batch_size, rank=r, world=world) for r in range(world)]
    assert all(len(b) == len(single) == -(-n // batch_size) for b in per_rank)  # ranks step in lockstep
    for step, whole in enumerate(single):
        parts = [per_rank[r][step] for r in range(world)]
        assert all(parts), "every rank gets at least one sample per step"
        if len(whole) >= world:
            assert sorted(i for p in parts for i in p) == sorted(whole)  # union == the one-process batch
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_last_batch_smaller_than_the_world_wraps_around():
    parts = [epoch_batches(9, 8, rank=r, world=2)[-1] for r in range(2)]
    single = epoch_batches(9, 8)
    assert parts[0] == single[-1] and parts[1] == [single[0][0]]  # one image seen twice, no rank left empty


def test_the_order_depends_on_seed_and_epoch_only():
    a = epoch_batches(40, 8, seed=0, epoch=1)
    assert a == epoch_batches(40, 8, seed=0, epoch=1)  # same (seed, epoch): same order, e.g. after a resume
    assert a != epoch_batches(40, 8, seed=0, epoch=2)
    assert a != epoch_batches(40, 8, seed=1, epoch=1)
    assert [i for b in a for i in b] != list(range(40))  # shuffled
    assert [i for b in epoch_batches(40, 8, shuffle=False) for i in b] == list(range(40))


def test_a_batch_smaller_than_the_world_is_refused():
    with pytest.raises(ValueError, match="number of processes"):
        GlobalBatchSampler(10, 2, 0, rank=0, world=4)


# --- sharding and gathering --------------------------------------------------------------------------

def test_shards_cover_the_test_set_once():
    for world in (1, 2, 3):
        shards = [shard_indices(11, Dist(rank=r, world=world)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(11))


def test_gather_in_one_process_returns_the_scores_unchanged():
    scores = torch.randn(5, 3)
    assert gather_predictions(list(range(5)), scores, 5, Dist()) is scores


# --- two processes against one -----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def torchrun_env(rank: int, world: int, port: int):
    """The variables torchrun sets for one process, and one torch thread; the process group destroyed at the end."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    set_torch_threads(1)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _worker(rank: int, world: int, port: int, config: dict, out_dirs: list[str], results: str) -> None:
    """One DDP process: train, then check gathering on uneven shards."""
    with torchrun_env(rank, world, port):
        from cprfl_lib.train import engine

        metrics = engine.train(config, out_dirs[rank], progress=False)
        d = Dist(rank=rank, world=world, local_rank=rank)
        idx = shard_indices(7, d)  # 4 and 3 rows
        gathered = gather_predictions(idx, torch.tensor(idx, dtype=torch.float32)[:, None].repeat(1, 3), 7, d)
        Path(results, f"rank{rank}.json").write_text(json.dumps(
            {"metrics": metrics["last_epoch"], "gathered": gathered.tolist(), "world": dist.get_world_size()}))


def _ddp_run(config: dict, tmp_path: Path) -> tuple[dict, list[dict]]:
    """The run in one process (its metrics) and in two gloo processes (each rank's results); rank 0 writes ddp/."""
    from cprfl_lib.train import engine

    single = engine.train(config, tmp_path / "single", progress=False)
    results = tmp_path / "results"
    results.mkdir()
    out_dirs = [str(tmp_path / "ddp"), str(tmp_path / "rank1-must-not-exist")]
    torch.multiprocessing.spawn(_worker, args=(2, free_port(), config, out_dirs, str(results)), nprocs=2, join=True)
    return single, [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_two_ranks_train_as_one(tmp_path):
    # deterministic, with an EMA; no dropout, whose masks depend on how a batch is split
    config = smoke_config(**{"train.deterministic": True, "model.dropout": 0.0, "train.ema": 0.9,
                             "optim.schedule": "cosine", "optim.epochs": 2, "optim.batch_size": 16})
    single, (r0, r1) = _ddp_run(config, tmp_path)
    assert r0["world"] == r1["world"] == 2
    # gathering puts every row back at its dataset index, on every rank
    expected = [[float(i)] * 3 for i in range(7)]
    assert r0["gathered"] == r1["gathered"] == expected

    # rank 0 writes the run, rank 1 nothing
    ddp = tmp_path / "ddp"
    assert {p.name for p in ddp.iterdir()} == {"config.yaml", "summary.csv", "weights.pt", "metrics.json",
                                                "predictions.npz"}
    assert not (tmp_path / "rank1-must-not-exist").exists()
    # every rank evaluated the whole test set (gathered) and got the same figures
    assert r1["metrics"]["model"]["mAP"] == pytest.approx(r0["metrics"]["model"]["mAP"], abs=1e-9)

    # the same optimisation as one process: each global batch of 16 is split 8 + 8 and DDP averages the
    # gradients; only the order of float sums differs (seen: logits within 3e-7, equal mAP)
    for tag in ("model", "ema"):
        for key in ("mAP", "medium", "tail"):
            assert r0["metrics"][tag][key] == pytest.approx(single["last_epoch"][tag][key], abs=1e-3), (tag, key)
    with np.load(ddp / "predictions.npz") as a, np.load(tmp_path / "single" / "predictions.npz") as b:
        np.testing.assert_allclose(a["model"], b["model"], atol=1e-4)
        np.testing.assert_allclose(a["ema"], b["ema"], atol=1e-4)
        np.testing.assert_array_equal(a["targets"], b["targets"])


@pytest.mark.slow
@pytest.mark.parametrize("overrides, atol_per_max_logit, atol", [
    # the backbone's batch norms see the global batch (GlobalBatchNorm2d under gloo): the same steps and the same
    # running statistics as one process, so every rank scores its test shard with the same model
    ({"model.freeze_backbone": False, "train.max_steps_per_epoch": 2, "optim.lr": 1e-4}, 1e-3, 0.0),
    # the official no_feature_grad leaves the VSI and the visual projection without gradients: DDP must not wait
    ({"model.no_feature_grad": True}, 0.0, 1e-4)], ids=["trainable-backbone", "no-feature-grad"])
def test_two_ranks_with_a_trainable_backbone_or_no_feature_grad_train_as_one(tmp_path, overrides, atol_per_max_logit,
                                                                            atol):
    _ddp_run(smoke_config(**{"train.deterministic": True, "model.dropout": 0.0, "optim.epochs": 2,
                             "optim.batch_size": 16, **overrides}), tmp_path)
    with np.load(tmp_path / "single" / "predictions.npz") as a, np.load(tmp_path / "ddp" / "predictions.npz") as b:
        single, ddp = a["model"], b["model"]
    print(f"max |logit difference| {np.abs(single - ddp).max():.2e} (logits up to {np.abs(single).max():.2f})")
    np.testing.assert_allclose(ddp, single, atol=atol + atol_per_max_logit * np.abs(single).max())
