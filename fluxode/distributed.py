"""Data-parallel training under torch.distributed: replicas that integrate one flow in lockstep.

Every rank holds the whole model and the whole flow state y = [W | aux… | clocks]; only the
data is split. A global minibatch B (the same indices as a single-process run) is cut into
``world_size`` contiguous shards, rank r computing on shard r, and the closure's loss on a
rank is

    L_r = (world_size / |B|) · Σ_{i ∈ shard r} ℓ_i,   so   (1/world_size) Σ_r ∇L_r = ∇(1/|B|) Σ_{i∈B} ℓ_i,

the single-process mean-loss gradient (for any shard sizes). The model is wrapped in
``DistributedDataParallel``, whose backward pass all-reduces and averages the gradient: every
closure call — i.e. every vector-field evaluation of the ODE solver, including the stages an
adaptive method rejects — runs forward + backward through DDP, hence one all-reduce per
evaluation. The reduced gradient is bitwise identical on all ranks, so the solver sees bitwise
identical (y, g) everywhere and takes the same decisions (step sizes, accept/reject, number of
evaluations); the replicas never drift and nothing else is synchronized.

``from_env()`` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR/MASTER_PORT)
and initializes the process group (gloo, CPU); without them it returns ``SINGLE``, a no-op.
Outputs are written by rank 0 only (``Replicas.is_main``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
from torch import Tensor, nn

BACKENDS = ("gloo",)


@dataclass
class Replicas:
    """This process's place among the replicas (``world_size == 1``: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    backwards: list[int] = field(default_factory=lambda: [0])  # all-reduced backward passes

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- data ----------------------------------------------------------------------------------
    def shard(self, idx: Tensor) -> Tensor:
        """This rank's part of the global minibatch ``idx``: contiguous, deterministic, the
        union over ranks is ``idx`` in order (shard sizes differ by at most one)."""
        return idx.tensor_split(self.world_size)[self.rank] if self.active else idx

    def loss_scale(self, global_count: int) -> float | None:
        """Factor on this rank's *summed* loss (None: use the mean, single process)."""
        return self.world_size / global_count if self.active else None

    # --- model ---------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` itself, or a DDP wrapper that all-reduces in every backward pass and counts
        the passes whose reduction completed (``backwards[0]``)."""
        if not self.active:
            return model
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model)
        counter = self.backwards

        def counting_allreduce(state, bucket):
            if bucket.is_last():
                counter[0] += 1
            return allreduce_hook(None, bucket)

        ddp.register_comm_hook(None, counting_allreduce)
        return ddp

    # --- collectives (no-ops in a single process) ----------------------------------------------
    def step_totals(self, loss: float, correct: int) -> tuple[float, int]:
        """(global mean loss, global correct count) from this rank's scaled loss and count."""
        if not self.active:
            return loss, correct
        import torch.distributed as dist

        t = torch.tensor([loss, float(correct)], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t[0]) / self.world_size, round(float(t[1]))

    def gather(self, obj) -> list:
        """``obj`` from every rank, in rank order."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


SINGLE = Replicas()


def _env_int(name: str, low: int, value: str | None) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
    if v < low:
        raise ValueError(f"environment variable {name} must be in [{low}, inf), got {v}")
    return v


def from_env(backend: str = "gloo", timeout_s: float = 300.0) -> Replicas:
    """Replicas from torchrun's environment, with the process group initialized; ``SINGLE``
    when WORLD_SIZE is unset or 1. ``timeout_s`` bounds every collective (a rank that stops
    answering makes the others fail instead of hanging)."""
    env = os.environ
    if env.get("WORLD_SIZE") in (None, ""):
        return SINGLE
    world = _env_int("WORLD_SIZE", 1, env["WORLD_SIZE"])
    if world == 1:
        return SINGLE
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)} (CPU), got {backend!r}")
    rank = _env_int("RANK", 0, env.get("RANK"))
    local = _env_int("LOCAL_RANK", 0, env.get("LOCAL_RANK", str(rank)))
    if rank >= world:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE={world}), got {rank}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise ValueError(f"environment variable {name} is not set (launch with torchrun)")
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    return Replicas(rank=rank, world_size=world, local_rank=local, backend=backend)


def shutdown(replicas: Replicas) -> None:
    """Leave the process group (after the last collective)."""
    if replicas.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the model's state (names, dtypes, shapes and raw bytes): equal digests
    mean bitwise-equal weights."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
