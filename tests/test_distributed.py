"""fluxode train under torchrun (gloo, CPU): replicas agree bit for bit, equal a single process
on the global batches, one all-reduce per gradient evaluation, resume works."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fluxode import distributed as D
from fluxode import train as T

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items()
       if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
ENV.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))

# iris: 112 training samples; batch 15 gives 8 batches, the last of 7: shards 8/7 and 4/3.
BASE = dict(flow="adamw", dataset="iris", model="logreg", batch_size=15, lr=0.05,
            dtype="float64", seed=2, checkpoint_every=3)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, cfg: dict, *extra: str) -> dict:
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "fluxode",
            "train", "--out", str(out), "--json", *extra]
    for k, v in cfg.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Only rank 0 prints: exactly one JSON summary on stdout.
    return json.loads(proc.stdout)


def _weights(path: Path) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in torch.load(path).values()])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_shards_are_a_deterministic_partition_of_the_global_batch():
    idx = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    for world in (1, 2, 3, 5):
        for n in (23, 7, 2):
            parts = [D.Replicas(rank=r, world_size=world).shard(idx[:n]) for r in range(world)]
            assert torch.equal(torch.cat(parts), idx[:n])  # union, in order
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1
            again = [D.Replicas(rank=r, world_size=world).shard(idx[:n]) for r in range(world)]
            assert all(torch.equal(a, b) for a, b in zip(parts, again))


def test_scaled_shard_losses_average_to_the_global_mean_gradient():
    """(1/R) Σ_r ∇[(R/|B|) Σ_shard ℓ] = ∇ mean_B ℓ, for unequal shards too (what DDP computes)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    x, y = torch.randn(11, 4, dtype=torch.float64), torch.randint(0, 3, (11,))
    idx = torch.arange(11)
    grads = []
    for r in range(3):
        rep = D.Replicas(rank=r, world_size=3)
        s = rep.shard(idx)
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[s]), y[s], reduction="sum")
        (loss * rep.loss_scale(len(idx))).backward()
        grads.append(model.weight.grad.clone())
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert torch.allclose(sum(grads) / 3, model.weight.grad, rtol=1e-14, atol=1e-16)


def test_from_env_single_process_and_bad_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert D.from_env() is D.SINGLE and not D.SINGLE.active and D.SINGLE.is_main
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert D.from_env() is D.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        D.from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"RANK must be in \[0, WORLD_SIZE=2\)"):
        D.from_env()
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        D.from_env()
    with pytest.raises(ValueError, match="backend must be one of"):
        D.from_env(backend="nccl")


def test_a_non_main_rank_writes_nothing(tmp_path):
    """The write gating alone (rank 1 of a one-process 'world' trains without collectives)."""
    cfg = T.TrainConfig(method="discrete", epochs=1, **BASE)
    T.train(cfg, tmp_path / "quiet", replicas=D.Replicas(rank=1, world_size=1))
    assert not (tmp_path / "quiet").exists()


@pytest.mark.slow
def test_torchrun_rk4_replicas_agree_bitwise_and_match_one_process(tmp_path):
    cfg = dict(BASE, method="rk4", epochs=2)
    summary = _torchrun(tmp_path / "dist", cfg)
    rep = summary["replicas"]
    assert rep["world_size"] == 2
    assert rep["weights_sha256"][0] == rep["weights_sha256"][1]
    # one all-reduce per gradient evaluation, on both ranks: rk4 = 4 evaluations per step
    assert rep["evaluations"] == rep["allreduced_backwards"] == [4 * 16, 4 * 16]
    assert summary["steps"] == 16
    for name in T.OUTPUTS:
        assert (tmp_path / "dist" / name).stat().st_size > 0
    assert not list((tmp_path / "dist").glob(".*.tmp"))
    single = T.train(T.TrainConfig(**cfg), tmp_path / "single")
    w_dist = _weights(tmp_path / "dist" / "model.pt")
    w_one = _weights(tmp_path / "single" / "model.pt")
    assert _rel(w_dist, w_one) <= 1e-10
    assert not torch.equal(w_one, _weights_at_start(cfg))  # it did train
    assert summary["final_loss"] == pytest.approx(single["final_loss"], rel=1e-10)
    assert summary["test_accuracy"] == single["test_accuracy"]


def _weights_at_start(cfg: dict) -> torch.Tensor:
    data = T.datasets.load(cfg["dataset"], torch.float64)
    m = T.build_model(cfg["model"], data.n_features, data.n_classes, torch.float64, cfg["seed"])
    return torch.cat([v.reshape(-1) for v in m.state_dict().values()])


@pytest.mark.slow
def test_torchrun_dopri5_lockstep_and_resume_bit_for_bit(tmp_path):
    """Adaptive steps: both ranks make the same accept/reject decisions (equal evaluation
    counts, each all-reduced); a run stopped after epoch 1 and resumed under torchrun ends with
    the same weights, bit for bit, as an uninterrupted one; both match a single process."""
    cfg = dict(BASE, method="dopri5", rtol=1e-6, atol=1e-9)
    full = _torchrun(tmp_path / "full", dict(cfg, epochs=2))
    rep = full["replicas"]
    assert rep["weights_sha256"][0] == rep["weights_sha256"][1]
    assert rep["evaluations"][0] == rep["evaluations"][1] == rep["allreduced_backwards"][0] \
        == rep["allreduced_backwards"][1]
    assert rep["evaluations"][0] > 6 * 16  # adaptive: more than one dopri5 step somewhere
    _torchrun(tmp_path / "part", dict(cfg, epochs=1))
    resumed = _torchrun(tmp_path / "part", dict(cfg, epochs=2), "--resume")
    assert resumed["replicas"]["weights_sha256"] == rep["weights_sha256"]
    assert torch.equal(_weights(tmp_path / "part" / "model.pt"),
                       _weights(tmp_path / "full" / "model.pt"))
    assert resumed["final_loss"] == full["final_loss"]
    T.train(T.TrainConfig(**dict(cfg, epochs=2)), tmp_path / "single")
    assert _rel(_weights(tmp_path / "full" / "model.pt"),
                _weights(tmp_path / "single" / "model.pt")) <= 1e-10
