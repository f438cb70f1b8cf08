"""Train a network on a bundled dataset with a flow, integrated by an ODE solver or discrete.

Reproducible and resumable. The model is initialized from the seed; epoch e visits the
training set in the order ``randperm`` seeded with (seed, e); every N steps a checkpoint
(model, optimizer state, RNG state, epoch/batch position, the epoch's running sums, metrics so
far, the run's configuration) is written atomically. ``resume=True`` continues from it and ends
with the same weights, bit for bit, as an uninterrupted run (deterministic methods, same
machine and thread count). Everything is validated before any output is written; a run whose
state turns non-finite stops with ``Diverged`` and never overwrites the last good checkpoint.

Checkpoints hold plain data only (tensors, numbers, strings; a schedule as its spec string), so
``torch.load(path, weights_only=True)`` reads them; they carry a format version and a SHA-256
digest of their content, and every field is checked on load (a bit flip, a non-finite value, a
malformed progress or RNG field is refused naming the field) before anything is written.

The output directory belongs to one run at a time (``fluxode.io.DirectoryLock``); a fresh run
refuses a directory that holds another run's outputs unless ``overwrite=True``. An adaptive
method stops an optimizer step after ``max_steps`` solver steps (``SolverStopped``).

Outputs in ``out``: checkpoint.pt, model.pt, metrics.csv, metrics.json, learning_curves.png,
summary.json (all written through ``fluxode.io``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import datasets, io, schedules
from .distributed import SINGLE, Replicas, weights_digest
from .engine import IntegrationError
from .flows import FLOWS
from .ode_optimizer import METHODS, ODEOptimizer
from .validation import at_least, positive, positive_int

FORMAT = "fluxode.train/2"
FORMATS = ("fluxode.train/1", FORMAT)  # /1: the same fields, without version and digest
VERSION = 2
MODELS = ("mlp", "logreg")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHECKPOINT, MODEL, SUMMARY = "checkpoint.pt", "model.pt", "summary.json"
OUTPUTS = (CHECKPOINT, MODEL, "metrics.csv", "metrics.json", "learning_curves.png", SUMMARY)
# Fields that must agree between a checkpoint and the run resuming it (epochs may grow).
IDENTITY = ("flow", "method", "dataset", "model", "batch_size", "lr", "weight_decay",
            "max_grad_norm", "options", "substeps", "rtol", "atol", "seed", "dtype")


class Diverged(RuntimeError):
    """Training produced a non-finite loss or state."""


class SolverStopped(Diverged):
    """An optimizer step's ODE solve hit its budget (max_steps) or its step size collapsed."""


class Interrupted(KeyboardInterrupt):
    """Training was interrupted (SIGINT); the message says what was kept."""


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
    max_steps: int = 1000  # adaptive methods: solver steps per optimizer step (a budget)

    def __post_init__(self):
        if isinstance(self.options, dict):  # a schedule object as its spec: plain data
            object.__setattr__(self, "options", {
                k: (schedules.spec(v) if isinstance(v, schedules.Schedule) else v)
                for k, v in self.options.items()})

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
        for name in ("epochs", "batch_size", "substeps", "checkpoint_every", "max_steps"):
            positive_int(name, getattr(self, name))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer in [0, inf), got {self.seed!r}")
        positive("lr", self.lr)
        big = torch.finfo(DTYPES[self.dtype]).max
        if self.lr > big:
            raise ValueError(f"lr={self.lr:g} is beyond {self.dtype}'s largest number "
                             f"({big:.3g}): lower --lr")
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
                            rtol=self.rtol, atol=self.atol, max_steps=self.max_steps,
                            **self.hyperparameters())

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
    """The checkpoint at ``path``, read with ``weights_only=True`` and checked field by field:
    format and version, digest, the run's identity (``config``'s), the epoch budget, progress,
    RNG state, and that every tensor is finite. Raises ValueError naming the first problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--resume: no checkpoint at {path} (start a fresh run without "
                         "--resume)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        msg = _one_line(err)
        raise ValueError(f"checkpoint {path} is corrupt or not a fluxode checkpoint "
                         f"({type(err).__name__}: {msg[:160]}); start afresh with "
                         "--overwrite") from None
    if not isinstance(ck, dict) or ck.get("format") not in FORMATS:
        raise ValueError(f"checkpoint {path} is not a {FORMAT} checkpoint")
    if ck["format"] == FORMAT:
        if ck.get("version") != VERSION:
            raise ValueError(f"checkpoint {path} has format version {ck.get('version')!r}, "
                             f"this fluxode reads version {VERSION}")
        if ck.get("sha256") != checkpoint_digest(ck):
            raise ValueError(f"checkpoint {path} is damaged: its content does not match its "
                             "digest (a bit flip or an edit); start afresh with --overwrite")
    saved = ck.get("config")
    if not isinstance(saved, dict):
        raise ValueError(f"checkpoint {path}: field 'config' is not a dict")
    diff = {k: (saved.get(k), v) for k, v in config.identity().items() if saved.get(k) != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} belongs to a different run ({what})")
    check_progress(ck.get("progress"), config, path)
    rng = ck.get("rng")
    want = torch.get_rng_state()
    if not (isinstance(rng, torch.Tensor) and rng.dtype == want.dtype
            and rng.shape == want.shape):
        raise ValueError(f"checkpoint {path}: field 'rng' is not a CPU RNG state "
                         f"(uint8 of shape {tuple(want.shape)}), got {_what(rng)}")
    for field in ("model", "optimizer"):
        if not isinstance(ck.get(field), dict):
            raise ValueError(f"checkpoint {path}: field {field!r} is not a dict")
        bad = _nonfinite(ck[field])
        if bad:
            raise ValueError(f"checkpoint {path}: non-finite values in {field} ({bad}): it "
                             "cannot be a good state; start afresh with --overwrite")
    return ck


HISTORY = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
           "nfe_per_step", "seconds")


def check_progress(prog, config: TrainConfig, path, batches: int | None = None) -> None:
    """The checkpoint's ``progress`` field: consistent positions, sums and history."""
    def bad(what):
        return ValueError(f"checkpoint {path}: malformed progress ({what})")

    if not isinstance(prog, dict):
        raise bad("not a dict")
    for k in ("epoch", "batch", "step"):
        v = prog.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad(f"{k} = {v!r}, expected an integer ≥ 0")
    sec = prog.get("seconds")
    if isinstance(sec, bool) or not isinstance(sec, (int, float)) or not math.isfinite(sec) \
            or sec < 0:
        raise bad(f"seconds = {sec!r}")
    if prog["epoch"] > config.epochs or (prog["epoch"] == config.epochs and prog["batch"]):
        raise ValueError(f"checkpoint {path} is at epoch {prog['epoch']} (step {prog['step']}), "
                         f"past --epochs {config.epochs}: give --epochs {prog['epoch']} or "
                         "more to continue it, or --overwrite to start afresh")
    hist = prog.get("history")
    if not isinstance(hist, list) or len(hist) != prog["epoch"]:
        raise bad(f"history must list {prog['epoch']} epoch(s)")
    for i, row in enumerate(hist):
        if not isinstance(row, dict) or set(row) != set(HISTORY) or row["epoch"] != i + 1 \
                or not all(isinstance(row[k], (int, float)) and not isinstance(row[k], bool)
                           and math.isfinite(row[k]) for k in HISTORY):
            raise bad(f"history row {i}")
    sums = prog.get("sums")
    if not isinstance(sums, dict) or set(sums) != set(_empty_sums()):
        raise bad("sums")
    for k, v in sums.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0:
            raise bad(f"sums[{k!r}] = {v!r}")
    if sums["steps"] != prog["batch"]:
        raise bad(f"sums['steps'] = {sums['steps']} but batch = {prog['batch']}")
    if batches is not None and (prog["batch"] >= batches
                                or prog["step"] != prog["epoch"] * batches + prog["batch"]):
        raise bad(f"epoch {prog['epoch']}, batch {prog['batch']}, step {prog['step']} do not "
                  f"fit {batches} batches per epoch")


def checkpoint_digest(ck: dict) -> str:
    """SHA-256 over every field but ``sha256`` itself (tensors by dtype, shape and bytes)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ck.items() if k != "sha256"})
    return h.hexdigest()


def _feed(h, x) -> None:
    if isinstance(x, dict):
        h.update(b"{")
        for k in sorted(x, key=repr):
            _feed(h, k)
            _feed(h, x[k])
        h.update(b"}")
    elif isinstance(x, (list, tuple)):
        h.update(b"[" if isinstance(x, list) else b"(")
        for v in x:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(x.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        h.update(f"{type(x).__name__}:{x!r};".encode())


def _nonfinite(x, where: str = "") -> str | None:
    """The first place holding a non-finite number in a nest of dicts/lists/tensors/floats."""
    if isinstance(x, dict):
        items = x.items()
    elif isinstance(x, (list, tuple)):
        items = enumerate(x)
    elif isinstance(x, torch.Tensor):
        ok = not (x.is_floating_point() or x.is_complex()) or bool(torch.isfinite(x).all())
        return None if ok else where or "tensor"
    elif isinstance(x, float):
        return None if math.isfinite(x) else where or "number"
    else:
        return None
    for k, v in items:
        bad = _nonfinite(v, f"{where}.{k}" if where else str(k))
        if bad:
            return bad
    return None


def _what(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _one_line(err) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(err)).strip()
    return text.splitlines()[0] if text else ""


def _check_tensors(saved: dict, live: dict, what: str, path) -> None:
    """A saved state dict with exactly the live one's keys, shapes and dtypes."""
    if set(saved) != set(live):
        missing, extra = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
        raise ValueError(f"checkpoint {path}: {what} does not fit this run (missing "
                         f"{missing}, unexpected {extra})")
    for k, v in live.items():
        x = saved[k]
        if not isinstance(x, torch.Tensor) or x.shape != v.shape or x.dtype != v.dtype:
            raise ValueError(f"checkpoint {path}: {what}[{k!r}] is {_what(x)}, this run has "
                             f"{_what(v)}")


def remove_stale_temporaries(out: Path) -> None:
    """Delete temporary files that ``fluxode.io`` left for our outputs when a writer was killed."""
    for name in OUTPUTS:
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


# --- the loop -----------------------------------------------------------------------------------

def train(config: TrainConfig, out, *, resume: bool = False, progress: bool | None = None,
          log=None, replicas: Replicas = SINGLE, overwrite: bool = False, note=None) -> dict:
    """Train; returns the summary (test_accuracy, final_loss, nfe_per_step, seconds, ...).
    ``seconds`` is the time spent in optimizer steps (gradient evaluations and the solver),
    summed over the run including before a resume; evaluation and output writing excluded.

    ``progress``: show a tqdm bar (default: when stderr is a terminal). ``log``: a function
    for one-line messages (default: none).

    ``replicas`` (``fluxode.distributed.from_env()`` under torchrun): data-parallel training;
    each minibatch is sharded across the ranks, the model is DDP-wrapped (one all-reduce per
    gradient evaluation) and only rank 0 writes outputs. The summary then carries
    ``replicas``: per-rank weight digests, gradient evaluations and all-reduced backward passes.

    ``out`` is locked for the run (``fluxode.io.DirectoryLock``; ``note`` gets the one-line
    report of a stale lock taken over). A fresh run refuses a directory that holds a run's
    outputs unless ``overwrite`` (which removes them first)."""
    config.validate()
    out = io.check_writable(out, "out")
    if resume and not (out / CHECKPOINT).is_file():
        raise ValueError(f"--resume: no checkpoint at {out / CHECKPOINT} (start a fresh run "
                         "without --resume)")
    if not replicas.is_main:
        return _train(config, out, resume, progress, log, replicas, overwrite, None)
    lock = io.DirectoryLock(out, note=note).acquire()
    ok = False
    try:
        summary = _train(config, out, resume, progress, log, replicas, overwrite, lock)
        ok = True
        return summary
    finally:
        lock.release(remove_dir_if_created=not ok)


def check_fresh(out, resume: bool, overwrite: bool) -> None:
    """Refuse a fresh run (neither resume nor overwrite) on a directory holding a run."""
    out = Path(out)
    held = [name for name in OUTPUTS if (out / name).exists()]
    if held and not resume and not overwrite:
        raise io.OutputError(f"{out} already holds a run ({', '.join(held)}): continue it "
                             "with --resume, or replace it with --overwrite")


def _train(config, out, resume, progress, log, replicas, overwrite, lock) -> dict:
    main = replicas.is_main
    if main:
        check_fresh(out, resume, overwrite)
    dtype = DTYPES[config.dtype]
    data = datasets.load(config.dataset, dtype)
    model = build_model(config.model, data.n_features, data.n_classes, dtype, config.seed)
    opt = config.make_optimizer(model)
    net = replicas.wrap(model)
    evaluations = 0
    prog = {"epoch": 0, "batch": 0, "step": 0, "seconds": 0.0, "history": [],
            "sums": _empty_sums()}
    good = False  # a checkpoint of this run's (validated or written by it) is in out
    if resume:
        ck = load_checkpoint(out / CHECKPOINT, config)
        check_progress(ck["progress"], config, out / CHECKPOINT,
                       math.ceil(len(data.y_train) / config.batch_size))
        _check_tensors(ck["model"], model.state_dict(), "model", out / CHECKPOINT)
        try:
            opt.load_state_dict(ck["optimizer"])
        except Exception as err:  # noqa: BLE001 - any refusal: the state does not fit
            raise ValueError(f"checkpoint {out / CHECKPOINT}: optimizer state does not fit "
                             f"this run ({_one_line(err)[:200]})") from None
        model.load_state_dict(ck["model"])
        prog = ck["progress"]
        torch.set_rng_state(ck["rng"])
        good = True
        if log and main:
            log(f"resumed from {out / CHECKPOINT}: epoch {prog['epoch'] + 1}, "
                f"batch {prog['batch']}, step {prog['step']}")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        if overwrite and not resume:
            for name in OUTPUTS:
                (out / name).unlink(missing_ok=True)
    if progress is None:
        progress = sys.stderr.isatty()
    progress = progress and main

    n, B = len(data.y_train), config.batch_size
    batches = math.ceil(n / B)

    def save_checkpoint():
        nonlocal good
        if not _finite(model, opt):
            raise Diverged(f"non-finite state at step {prog['step']}")
        if not main:
            return
        ck = {"format": FORMAT, "version": VERSION, "config": dataclasses.asdict(config),
              "flow": config.flow, "hyperparameters": config.hyperparameters(),
              "model": model.state_dict(), "optimizer": opt.state_dict(),
              "rng": torch.get_rng_state(), "progress": prog}
        ck["sha256"] = checkpoint_digest(ck)
        io.save_torch(out / CHECKPOINT, ck)
        good = True

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
                try:
                    loss, correct = _step(net, opt, data.x_train[mine], data.y_train[mine],
                                          replicas.loss_scale(len(idx)))
                except IntegrationError as err:
                    if "max_steps" in str(err) or "collapsed" in str(err):
                        raise SolverStopped(
                            f"optimizer step {prog['step'] + 1} stopped: {_one_line(err)}") \
                            from None
                    raise
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
    except SolverStopped as err:
        kept = (f"the last good checkpoint is kept at {out / CHECKPOINT}" if good
                else "no checkpoint was written")
        raise SolverStopped(f"{err}; the flow is stiff at lr={config.lr:g} for "
                            f"{config.method}: lower --lr, use a fixed-step --method (rk4), or "
                            f"raise --max-steps (now {config.max_steps}); {kept}") from None
    except (Diverged, FloatingPointError) as err:
        kept = (f"the last good checkpoint is kept at {out / CHECKPOINT}" if good
                else "no good checkpoint was written")
        raise Diverged(f"training diverged ({_one_line(err)}); lr={config.lr:g} is probably "
                       f"too large; {kept}") from None
    except KeyboardInterrupt:
        kept = (f"the checkpoint at {out / CHECKPOINT} (written every {config.checkpoint_every} "
                "steps) is whole: continue with --resume" if good
                else "no checkpoint was written yet")
        raise Interrupted(f"interrupted at step {prog['step']}; {kept}") from None
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
        summaries[label] = train(cfg, out / method, progress=False, overwrite=True)
        runs[label] = _load_history(out / method)
    from .plotting import plot_learning_curves

    plot_learning_curves(out / "compare.png", runs,
                         title="MLP on digits: ODE-integrated vs discrete AdamW")
    return summaries


def _load_history(out: Path) -> list[dict]:
    import json

    return json.loads((out / "metrics.json").read_text())["history"]
