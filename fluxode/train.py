"""Train a network on a bundled dataset with a flow, integrated by an ODE solver or discrete.

Reproducible and resumable. The model is initialized from the seed; epoch e visits the
training set in the order ``randperm`` seeded with (seed, e); every N steps a checkpoint
(model, optimizer state, RNG state, epoch/batch position, the epoch's running sums, metrics so
far, the run's configuration) is written atomically. ``resume=True`` continues from it and ends
with the same weights, bit for bit, as an uninterrupted run (deterministic methods, same
machine and thread count). Everything is validated before any output is written; a run whose
state turns non-finite stops with ``Diverged`` and never overwrites the last good checkpoint.

Outputs in ``out``: checkpoint.pt, model.pt, metrics.csv, metrics.json, learning_curves.png,
summary.json (all written through ``fluxode.io``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import datasets, io
from .distributed import SINGLE, Replicas, weights_digest
from .flows import FLOWS
from .ode_optimizer import METHODS, ODEOptimizer
from .validation import at_least, positive, positive_int

FORMAT = "fluxode.train/1"
MODELS = ("mlp", "logreg")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHECKPOINT, MODEL, SUMMARY = "checkpoint.pt", "model.pt", "summary.json"
OUTPUTS = (CHECKPOINT, MODEL, "metrics.csv", "metrics.json", "learning_curves.png", SUMMARY)
# Fields that must agree between a checkpoint and the run resuming it (epochs may grow).
IDENTITY = ("flow", "method", "dataset", "model", "batch_size", "lr", "weight_decay",
            "max_grad_norm", "options", "substeps", "rtol", "atol", "seed", "dtype")


class Diverged(RuntimeError):
    """Training produced a non-finite loss or state."""


@dataclass(frozen=True)
class TrainConfig:
    flow: str = "adamw"
    method: str = "rk4"
    dataset: str = "digits"
    model: str = "mlp"
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float | None = None   # None: the flow's default
    max_grad_norm: float | None = None
    substeps: int = 1
    rtol: float = 1e-3
    atol: float = 1e-6
    seed: int = 0
    checkpoint_every: int = 50
    dtype: str = "float32"
    options: dict = dataclasses.field(default_factory=dict)  # other flow hyperparameters

    def validate(self) -> TrainConfig:
        if self.flow not in FLOWS or FLOWS[self.flow].needs_hessian:
            raise ValueError(f"flow must be one of "
                             f"{sorted(n for n, c in FLOWS.items() if not c.needs_hessian)}, "
                             f"got {self.flow!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.dataset not in datasets.NAMES:
            raise ValueError(f"dataset must be one of {list(datasets.NAMES)}, "
                             f"got {self.dataset!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {list(MODELS)}, got {self.model!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        for name in ("epochs", "batch_size", "substeps", "checkpoint_every"):
            positive_int(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer in [0, inf), got {self.seed!r}")
        positive("lr", self.lr)
        positive("rtol", self.rtol)
        positive("atol", self.atol)
        if self.weight_decay is not None:
            at_least("weight_decay", self.weight_decay, 0.0)
        self.make_optimizer(nn.Linear(1, 1))  # the flow validates its hyperparameters
        return self

    def hyperparameters(self) -> dict:
        hp = {**self.options, "lr": self.lr, "max_grad_norm": self.max_grad_norm}
        if self.weight_decay is not None:
            hp["weight_decay"] = self.weight_decay
        return hp

    def make_optimizer(self, model: nn.Module) -> ODEOptimizer:
        return ODEOptimizer(model.parameters(), self.flow, self.method, substeps=self.substeps,
                            rtol=self.rtol, atol=self.atol, **self.hyperparameters())

    def identity(self) -> dict:
        return {k: getattr(self, k) for k in IDENTITY}


# --- the pieces ---------------------------------------------------------------------------------

def build_model(name: str, n_features: int, n_classes: int, dtype=torch.float32,
                seed: int = 0) -> nn.Module:
    """``mlp``: features → 64 tanh → classes; ``logreg``: features → classes. Seeded init."""
    torch.manual_seed(seed)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(n_features, 64), nn.Tanh(), nn.Linear(64, n_classes))
    elif name == "logreg":
        model = nn.Linear(n_features, n_classes)
    else:
        raise ValueError(f"model must be one of {list(MODELS)}, got {name!r}")
    return model.to(dtype)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order of epoch ``epoch``: a permutation derived from (seed, epoch) only."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


@torch.no_grad()
def evaluate(model: nn.Module, x, y) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on (x, y)."""
    logits = model(x)
    return (float(nn.functional.cross_entropy(logits, y)),
            float((logits.argmax(1) == y).double().mean()))


def _finite(model: nn.Module, opt: ODEOptimizer) -> bool:
    tensors = list(model.parameters()) + [v for st in opt.state.values() for v in st.values()
                                          if isinstance(v, torch.Tensor)]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def load_checkpoint(path: Path, config: TrainConfig) -> dict:
    """The checkpoint at ``path``, checked to belong to a run with ``config``'s identity."""
    if not path.is_file():
        raise ValueError(f"--resume: no checkpoint at {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"checkpoint {path} is corrupt or not a fluxode checkpoint "
                         f"({type(err).__name__}: {msg[:200]})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not a {FORMAT} checkpoint")
    saved = ck.get("config", {})
    diff = {k: (saved.get(k), v) for k, v in config.identity().items() if saved.get(k) != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} belongs to a different run ({what})")
    return ck


def remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files that ``fluxode.io`` left for our outputs when a writer was killed."""
    for name in OUTPUTS:
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


# --- the loop -----------------------------------------------------------------------------------

def train(config: TrainConfig, out, *, resume: bool = False, progress: bool | None = None,
          log=None, replicas: Replicas = SINGLE) -> dict:
    """Train; returns the summary (test_accuracy, final_loss, nfe_per_step, seconds, ...).
    ``seconds`` is the time spent in optimizer steps (gradient evaluations and the solver),
    summed over the run including before a resume; evaluation and output writing excluded.

    ``progress``: show a tqdm bar (default: when stderr is a terminal). ``log``: a function
    for one-line messages (default: none).

    ``replicas`` (``fluxode.distributed.from_env()`` under torchrun): data-parallel training;
    each minibatch is sharded across the ranks, the model is DDP-wrapped (one all-reduce per
    gradient evaluation) and only rank 0 writes outputs. The summary then carries
    ``replicas``: per-rank weight digests, gradient evaluations and all-reduced backward passes."""
    config.validate()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a directory, got the file {out}")
    dtype = DTYPES[config.dtype]
    data = datasets.load(config.dataset, dtype)
    model = build_model(config.model, data.n_features, data.n_classes, dtype, config.seed)
    opt = config.make_optimizer(model)
    net = replicas.wrap(model)
    main = replicas.is_main
    evaluations = 0
    prog = {"epoch": 0, "batch": 0, "step": 0, "seconds": 0.0, "history": [],
            "sums": _empty_sums()}
    if resume:
        ck = load_checkpoint(out / CHECKPOINT, config)
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            prog = ck["progress"]
        except (KeyError, RuntimeError, ValueError) as err:
            raise ValueError(f"checkpoint {out / CHECKPOINT} does not fit this run: "
                             f"{str(err).splitlines()[0]}") from None
        torch.set_rng_state(ck["rng"])
        if log and main:
            log(f"resumed from {out / CHECKPOINT}: epoch {prog['epoch'] + 1}, "
                f"batch {prog['batch']}, step {prog['step']}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and main

    n, B = len(data.y_train), config.batch_size
    batches = math.ceil(n / B)

    def save_checkpoint():
        if not _finite(model, opt):
            raise Diverged(f"non-finite state at step {prog['step']}")
        if not main:
            return
        io.save_torch(out / CHECKPOINT, {
            "format": FORMAT, "config": dataclasses.asdict(config), "flow": config.flow,
            "hyperparameters": config.hyperparameters(), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "progress": prog})

    from tqdm import tqdm

    try:
        while prog["epoch"] < config.epochs:
            epoch = prog["epoch"]
            order = epoch_order(n, config.seed, epoch)
            bar = tqdm(total=batches, initial=prog["batch"], disable=not progress,
                       desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, file=sys.stderr)
            sums = prog["sums"]
            while prog["batch"] < batches:
                idx = order[prog["batch"] * B:(prog["batch"] + 1) * B]
                t0 = time.perf_counter()
                mine = replicas.shard(idx)
                loss, correct = _step(net, opt, data.x_train[mine], data.y_train[mine],
                                      replicas.loss_scale(len(idx)))
                loss, correct = replicas.step_totals(loss, correct)
                prog["seconds"] += time.perf_counter() - t0
                evaluations += opt.last_nfe
                if not math.isfinite(loss):
                    raise Diverged(f"loss {loss} at step {prog['step']}")
                sums["loss"] += loss * len(idx)
                sums["correct"] += correct
                sums["count"] += len(idx)
                sums["nfe"] += opt.last_nfe
                sums["steps"] += 1
                prog["batch"] += 1
                prog["step"] += 1
                bar.update()
                bar.set_postfix(loss=f"{sums['loss'] / sums['count']:.4f}",
                                acc=f"{sums['correct'] / sums['count']:.3f}",
                                nfe=f"{sums['nfe'] / sums['steps']:.1f}")
                if prog["step"] % config.checkpoint_every == 0:
                    save_checkpoint()
            bar.close()
            test_loss, test_acc = evaluate(model, data.x_test, data.y_test)
            prog["history"].append({
                "epoch": epoch + 1, "step": prog["step"],
                "train_loss": sums["loss"] / sums["count"],
                "train_accuracy": sums["correct"] / sums["count"],
                "test_loss": test_loss, "test_accuracy": test_acc,
                "nfe_per_step": sums["nfe"] / sums["steps"],
                "seconds": prog["seconds"]})
            prog["epoch"] += 1
            prog["batch"] = 0
            prog["sums"] = _empty_sums()
            if log and main:
                row = prog["history"][-1]
                log(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, test accuracy "
                    f"{row['test_accuracy']:.4f}, {row['nfe_per_step']:.1f} evaluations/step")
            if main:
                write_metrics(out, prog["history"], config, plot=False)
    except (Diverged, FloatingPointError) as err:
        kept = (f"the last good checkpoint is kept at {out / CHECKPOINT}"
                if (out / CHECKPOINT).exists() else "no checkpoint was written")
        raise Diverged(f"training diverged ({err}); lr={config.lr:g} is probably too large; "
                       f"{kept}") from None
    save_checkpoint()
    hist = prog["history"]
    summary = {"flow": config.flow, "method": config.method, "dataset": config.dataset,
               "model": config.model, "epochs": config.epochs, "steps": prog["step"],
               "test_accuracy": hist[-1]["test_accuracy"], "test_loss": hist[-1]["test_loss"],
               "final_loss": hist[-1]["train_loss"],
               "nfe_per_step": sum(r["nfe_per_step"] for r in hist) / len(hist),
               "seconds": prog["seconds"], "out": str(out)}
    if replicas.active:
        summary["replicas"] = {
            "world_size": replicas.world_size,
            "weights_sha256": replicas.gather(weights_digest(model)),
            "evaluations": replicas.gather(evaluations),
            "allreduced_backwards": replicas.gather(replicas.backwards[0])}
    if main:
        write_metrics(out, hist, config)
        io.save_torch(out / MODEL, model.state_dict())
        io.write_json(out / SUMMARY, summary)
    return summary


def _empty_sums() -> dict:
    return {"loss": 0.0, "correct": 0, "count": 0, "nfe": 0, "steps": 0}


def _step(model: nn.Module, opt: ODEOptimizer, xb, yb,
          scale: float | None = None) -> tuple[float, int]:
    """One optimizer step on a minibatch; (loss, correct predictions) at its start. The loss
    is the batch mean, or ``scale`` × the batch sum (a shard of a distributed batch)."""
    first = {}

    def closure():
        opt.zero_grad()
        logits = model(xb)
        if scale is None:
            loss = nn.functional.cross_entropy(logits, yb)
        else:
            loss = nn.functional.cross_entropy(logits, yb, reduction="sum") * scale
        loss.backward()
        if not first:
            first["correct"] = int((logits.argmax(1) == yb).sum())
        return loss

    loss = opt.step(closure)
    return float(loss.detach()), first["correct"]


# --- outputs ------------------------------------------------------------------------------------

def write_metrics(out: Path, history: list[dict], config: TrainConfig | None = None,
                  plot: bool = True) -> None:
    """metrics.csv, metrics.json and (``plot``) learning_curves.png in ``out``."""
    if not history:
        return
    cols = list(history[0])
    io.write_text(out / "metrics.csv", ",".join(cols) + "\n" + "".join(
        ",".join(f"{row[c]:.10g}" if isinstance(row[c], float) else str(row[c]) for c in cols)
        + "\n" for row in history))
    io.write_json(out / "metrics.json", {"config": dataclasses.asdict(config) if config else None,
                                         "history": history})
    if not plot:
        return
    from .plotting import plot_learning_curves

    label = f"{config.flow} {config.method}" if config else "run"
    plot_learning_curves(out / "learning_curves.png", {label: history},
                         title=f"{config.model} on {config.dataset}" if config else "")


def demo(out, epochs: int = 2) -> dict:
    """An MLP on digits trained by discrete AdamW and by the integrated AdamW flow (rk4), same
    seed and data order; writes both runs under ``out`` and ``out/compare.png``; returns
    {label: summary}. A few seconds on a laptop CPU."""
    out = Path(out)
    runs, summaries = {}, {}
    for method in ("discrete", "rk4"):
        cfg = TrainConfig(flow="adamw", method=method, epochs=epochs, checkpoint_every=10**6)
        label = f"adamw {method}"
        summaries[label] = train(cfg, out / method, progress=False)
        runs[label] = _load_history(out / method)
    from .plotting import plot_learning_curves

    plot_learning_curves(out / "compare.png", runs,
                         title="MLP on digits: ODE-integrated vs discrete AdamW")
    return summaries


def _load_history(out: Path) -> list[dict]:
    import json

    return json.loads((out / "metrics.json").read_text())["history"]
