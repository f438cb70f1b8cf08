"""Adversarial cases for every command: one table of failures, each asserting the exit code, a
one-line message naming the problem, no traceback, no raw ANSI escapes, and that no file that
existed before the case changed. Then the behaviours a table cannot hold: scheduled runs
resumed bit for bit (in process; killed with SIGKILL in the slow tests), two concurrent runs on
one directory, stiff solves stopped within their budget, diverged sweep points reported."""

from __future__ import annotations

import io as _io
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from fluxode import cli, io, schedules
from fluxode import train as T
from fluxode.engine import IntegrationError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
BASE = ["--method", "discrete", "--model", "logreg", "--batch-size", "256",
        "--checkpoint-every", "2", "--schedule", "cosine:40"]


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-epoch run with a cosine schedule (the checkpoint every case starts from)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(["train", *BASE, "--epochs", "2", "--out", str(out), "--json"]) == 0
    return out


def _rewrite(path: Path, edit: Callable[[dict], None], digest: bool = True) -> None:
    """Load a checkpoint, edit it, save it again (with a fresh digest unless told not to)."""
    ck = torch.load(path, weights_only=True)
    edit(ck)
    if digest:
        ck["sha256"] = T.checkpoint_digest(ck)
    buf = _io.BytesIO()
    torch.save(ck, buf)
    path.write_bytes(buf.getvalue())


class Evil:  # pickled into a checkpoint: weights_only must refuse it
    def __reduce__(self):
        return (print, ("unpickled!",))


def _bitflip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    w = torch.load(path, weights_only=True)["model"]["weight"].numpy().tobytes()
    i = data.find(w[:64])
    assert i > 0
    data[i + 5] ^= 0x10
    path.write_bytes(bytes(data))


def _corrupt(path: Path) -> None:
    path.write_bytes(b"not a checkpoint" * 10)


def _pickled_object(path: Path) -> None:
    buf = _io.BytesIO()
    torch.save({"format": T.FORMAT, "evil": Evil()}, buf)
    path.write_bytes(buf.getvalue())


def _nan(ck):
    ck["model"]["weight"][0, 0] = float("nan")


def _edit_weight(ck):
    ck["model"]["weight"][0, 0] += 1.0


@dataclass
class Case:
    name: str
    argv: Callable[[Path], list]           # d: the case's directory (a copy of the finished run)
    code: int
    message: str                           # must appear in the one line on stderr
    setup: Callable[[Path, pytest.MonkeyPatch], None] | None = None
    copy_run: bool = True
    also: tuple = field(default_factory=tuple)  # more substrings the line must hold


def _train(*extra):
    return lambda d: ["train", *BASE, "--epochs", "2", "--out", str(d), *extra]


def _ck_setup(fn, **kw):
    return lambda d, mp: fn(d / T.CHECKPOINT, **kw) if kw else fn(d / T.CHECKPOINT)


_HELD: list = []  # locks a case holds while the command runs


def _hold_lock(d, mp):
    _HELD.append(io.DirectoryLock(d).acquire())


def _foreign_lock(d, mp):
    (d / io.LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))


def _interrupt_after(n):
    def setup(d, mp):
        real, calls = T._step, [0]

        def step(*a, **k):
            calls[0] += 1
            if calls[0] > n:
                raise KeyboardInterrupt
            return real(*a, **k)
        mp.setattr(T, "_step", step)
    return setup


def _disk_full(d, mp):
    real = io.atomic_write_bytes

    def write(path, data):
        if Path(path).name == "metrics.csv":
            raise OSError(28, "No space left on device", str(path))
        return real(path, data)
    mp.setattr(io, "atomic_write_bytes", write)


CASES = [
    # --- checkpoints: plain data, versioned, validated field by field before any write
    Case("corrupt checkpoint", _train("--resume"), 2, "is corrupt or not a fluxode checkpoint",
         _ck_setup(_corrupt)),
    Case("pickled object (ANSI-free)", _train("--resume"), 2,
         "is corrupt or not a fluxode checkpoint", _ck_setup(_pickled_object),
         also=("UnpicklingError",)),
    Case("bit flip in a weight", _train("--resume"), 2, "damaged", _ck_setup(_bitflip)),
    Case("edited weight, old digest", _train("--resume"), 2, "does not match its digest",
         lambda d, mp: _rewrite(d / T.CHECKPOINT, _edit_weight, digest=False)),
    Case("NaN weight", _train("--resume"), 2, "non-finite values in model",
         lambda d, mp: _rewrite(d / T.CHECKPOINT, _nan)),
    Case("NaN optimizer state", _train("--resume"), 2, "non-finite values in optimizer",
         lambda d, mp: _rewrite(d / T.CHECKPOINT, lambda ck: ck["optimizer"]["state"][0][
             "exp_avg"].fill_(float("inf")))),
    Case("progress batch out of range", _train("--resume"), 2, "malformed progress",
         lambda d, mp: _rewrite(d / T.CHECKPOINT,
                                lambda ck: ck["progress"].update(epoch=1, batch=10 ** 9))),
    Case("progress step a string", _train("--resume"), 2, "malformed progress (step",
         lambda d, mp: _rewrite(d / T.CHECKPOINT,
                                lambda ck: ck["progress"].update(step="48"))),
    Case("rng field malformed", _train("--resume"), 2, "field 'rng'",
         lambda d, mp: _rewrite(d / T.CHECKPOINT, lambda ck: ck.update(rng=torch.zeros(3)))),
    Case("model of another shape", _train("--resume"), 2, "model['weight']",
         lambda d, mp: _rewrite(d / T.CHECKPOINT, lambda ck: ck["model"].update(
             weight=torch.zeros(2, 2)))),
    Case("unknown format version", _train("--resume"), 2, "format version 99",
         lambda d, mp: _rewrite(d / T.CHECKPOINT, lambda ck: ck.update(version=99))),
    Case("another run's checkpoint", lambda d: ["train", *BASE, "--epochs", "2", "--flow",
                                               "sgd", "--out", str(d), "--resume"], 2,
         "belongs to a different run (flow: checkpoint 'adamw', this run 'sgd')"),
    Case("another schedule", lambda d: ["train", *BASE, "--epochs", "2", "--schedule",
                                        "linear:40", "--out", str(d), "--resume"], 2,
         "belongs to a different run (options"),
    Case("resume with a smaller budget", lambda d: ["train", *BASE, "--epochs", "1",
                                                    "--out", str(d), "--resume"], 2,
         "past --epochs 1", also=("--epochs 2 or more",)),
    Case("no checkpoint to resume", _train("--resume"), 2, "no checkpoint at", copy_run=False),
    # --- output directories: checked before work, owned by one run
    Case("fresh run over a finished one", _train(), 2, "already holds a run",
         also=("--resume", "--overwrite")),
    Case("--resume with --overwrite", _train("--resume", "--overwrite"), 2, "contradict"),
    Case("--out empty", lambda d: ["train", *BASE, "--out", ""], 2, "--out is empty",
         copy_run=False),
    Case("--out under a file", lambda d: ["train", *BASE, "--out",
                                          str(d / T.CHECKPOINT / "x")], 2,
         "is under the file"),
    Case("--out in /proc", lambda d: ["train", *BASE, "--out", "/proc/fluxode-nope"], 2,
         "is not writable", copy_run=False),
    Case("directory in use", _train("--resume"), 2, "is in use by another run",
         _hold_lock, also=(f"pid {os.getpid()}",)),
    Case("lock from another host", _train("--resume"), 2, "which this host cannot check",
         _foreign_lock, also=(io.LOCK,)),
    Case("compare --out in /proc", lambda d: ["compare", "--flow", "sgd", "--problem", "ravine",
                                              "--out", "/proc/fluxode-nope"], 2,
         "is not writable", copy_run=False),
    # --- bounds on work and memory, checked before allocating
    Case("limit --T 1e9", lambda d: ["limit", "--T", "1e9"], 2, "more than max_steps",
         copy_run=False, also=("--T", "--max-steps")),
    Case("compare --steps 1e8", lambda d: ["compare", "--flow", "sgd", "--problem",
                                           "quadratic", "--steps", "100000000", "--out",
                                           str(d)], 2, "more than max_steps", copy_run=False,
         also=("--steps", "--max-steps")),
    Case("compare --step-size 1e-12", lambda d: ["compare", "--flow", "sgd", "--problem",
                                                 "quadratic", "--method", "rk4", "--step-size",
                                                 "1e-12", "--out", str(d)], 2,
         "step_size=1e-12", copy_run=False, also=("--step-size",)),
    Case("limit: solver over --max-steps", lambda d: ["limit", "--lr", "0.5", "--T", "2",
                                                      "--hs", "0.5", "0.25", "0.125",
                                                      "--max-steps", "20"],
         1, "the solver stopped: more than max_steps=20", copy_run=False),
    Case("train dopri5 stiff step", lambda d: ["train", "--flow", "sgd", "--method", "dopri5",
                                               "--model", "logreg", "--lr", "1e4",
                                               "--weight-decay", "1", "--max-steps", "30",
                                               "--out", str(d / "stiff")], 1,
         "more than max_steps=30", copy_run=False, also=("--max-steps", "stiff")),
    Case("lr beyond float32", lambda d: ["train", *BASE, "--lr", "1e39", "--out", str(d / "n")],
         2, "beyond float32", copy_run=False),
    # --- result sanity
    Case("limit on diverged runs", lambda d: ["limit", "--lr", "100", "--T", "4", "--hs", "0.5",
                                              "0.25", "0.125"], 2, "diverged",
         copy_run=False, also=("no order to fit",)),
    Case("limit on unstable runs", lambda d: ["limit", "--lr", "3", "--T", "2", "--hs", "0.5",
                                              "0.25", "0.125"], 2,
         "exceeds the size of the solution", copy_run=False),
    Case("limit at rounding level", lambda d: ["limit", "--lr", "1e-9"], 2, "rounding level",
         copy_run=False),
    Case("limit duplicate h", lambda d: ["limit", "--hs", "0.5", "0.5", "0.5"], 2,
         "distinct step sizes", copy_run=False),
    Case("compare --demo with --flow", lambda d: ["compare", "--demo", "--flow", "sgd",
                                                  "--lr", "0.1", "--out", str(d)], 2,
         "drop --flow, --lr", copy_run=False),
    Case("compare --demo with --steps", lambda d: ["compare", "--demo", "--steps", "7",
                                                   "--out", str(d)], 2, "drop --steps",
         copy_run=False),
    Case("verify unknown flow", lambda d: ["verify", "--flow", "nope", "--steps", "2"], 2,
         "'nope'", copy_run=False),
    # --- interruption and filesystem failures mid-run
    Case("SIGINT mid-run", _train("--resume", "--epochs", "3"), 130, "interrupted at step 13",
         _interrupt_after(1), also=("--resume",)),
    Case("disk full mid-run", lambda d: ["train", *BASE, "--epochs", "1",
                                         "--out", str(d / "full")], 1,
         "No space left on device", _disk_full, copy_run=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_adversarial(case, finished, tmp_path, capsys, monkeypatch):
    d = tmp_path / "run"
    if case.copy_run:
        shutil.copytree(finished, d)
    if case.setup:
        case.setup(d, monkeypatch)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    try:
        rc = cli.main(case.argv(d))
        after = _snapshot(tmp_path)  # before a held lock is released (it removes its file)
    finally:
        while _HELD:
            _HELD.pop().release()
    cap = capsys.readouterr()
    err = cap.err
    assert rc == case.code, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fluxode {case.argv(d)[0]}: error: "), err
    assert case.message in lines[0], err
    for more in case.also:
        assert more in lines[0], err
    assert "Traceback" not in err and "\x1b" not in err
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, changed
    assert not list(tmp_path.rglob("*.tmp"))


def test_singular_newton_hessian_is_one_line(tmp_path, capsys, monkeypatch):
    """A linear-algebra failure inside a solve (torch's LinAlgError) is one line, exit 1."""
    import fluxode.compare as C

    def boom(*a, **k):
        raise torch.linalg.LinAlgError("torch.linalg.solve: The solver failed because the input "
                                       "matrix is singular.")
    monkeypatch.setattr(C, "compare", boom)
    rc = cli.main(["compare", "--flow", "newton", "--problem", "quadratic",
                   "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "singular" in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="distinct step sizes"):
        cli.main(["--debug", "limit", "--hs", "0.5", "0.5", "0.5"])
    with pytest.raises(ValueError, match="distinct step sizes"):
        cli.main(["limit", "--hs", "0.5", "0.5", "0.5", "--debug"])


def test_stale_lock_is_reported_and_taken_over(finished, tmp_path, capsys):
    d = tmp_path / "run"
    shutil.copytree(finished, d)
    (d / io.LOCK).write_text(json.dumps({"pid": 999_999_999, "host": socket.gethostname(),
                                         "started": "then"}))
    assert cli.main(["train", *BASE, "--epochs", "3", "--out", str(d), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "stale lock" in err and "999999999" in err and "taking it over" in err
    assert not (d / io.LOCK).exists()  # released at the end


def test_overwrite_replaces_a_finished_run(finished, tmp_path, capsys):
    d = tmp_path / "run"
    shutil.copytree(finished, d)
    assert cli.main(["train", *BASE, "--epochs", "1", "--out", str(d), "--overwrite",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 6
    ck = torch.load(d / T.CHECKPOINT, weights_only=True)
    assert ck["progress"]["epoch"] == 1 and ck["version"] == T.VERSION


# --- plain-data checkpoints and state dicts, schedules as spec strings --------------------------
@pytest.mark.parametrize("spec", ["constant", "linear:40", "linear:40:0.25", "linear:40:0.1:0.5",
                                  "cosine:40", "cosine:40:0.0001", "warmup:5",
                                  "warmup:5:cosine:40", "warmup:5:0.3:linear:10:0.2",
                                  "warmup:3:warmup:2:0.5:cosine:7:1e-05"])
def test_schedule_spec_round_trips(spec):
    s = schedules.parse(spec)
    assert schedules.parse(s.spec()) == s
    assert s.spec() == spec or spec == "warmup:5"  # canonical: defaults left out


def test_schedule_spec_keeps_every_float():
    for s in (schedules.Linear(10, 1 / 3, 0.1), schedules.Cosine(7, 1 / 7),
              schedules.Warmup(4, schedules.Cosine(9), 2 / 3)):
        assert schedules.parse(s.spec()) == s


@pytest.mark.parametrize("spec", ["linear:30", "cosine:30", "warmup:5:cosine:30"])
def test_optimizer_state_dict_with_a_schedule_loads_weights_only(spec, tmp_path):
    from fluxode.optim import FlowOptimizer

    w = torch.nn.Parameter(torch.ones(3))
    opt = FlowOptimizer([w], "adamw", schedule=spec)
    assert opt.param_groups[0]["schedule"] == spec
    w.sum().backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    sd = torch.load(tmp_path / "opt.pt", weights_only=True)
    opt2 = FlowOptimizer([torch.nn.Parameter(torch.ones(3))], "adamw", schedule=spec)
    opt2.load_state_dict(sd)
    assert opt2.flow_for(opt2.param_groups[0]).schedule == schedules.parse(spec)


@pytest.mark.parametrize("spec", ["linear:30:0.1", "cosine:30", "warmup:5:cosine:30"])
def test_scheduled_run_resumes_bit_for_bit_in_process(spec, tmp_path):
    cfg = dict(method="discrete", model="logreg", batch_size=100, checkpoint_every=4, seed=2,
               options={"schedule": spec})
    T.train(T.TrainConfig(epochs=2, **cfg), tmp_path / "full")
    T.train(T.TrainConfig(epochs=1, **cfg), tmp_path / "part")
    T.train(T.TrainConfig(epochs=2, **cfg), tmp_path / "part", resume=True)
    a = torch.load(tmp_path / "full" / T.MODEL, weights_only=True)
    b = torch.load(tmp_path / "part" / T.MODEL, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ck = torch.load(tmp_path / "part" / T.CHECKPOINT, weights_only=True)
    assert ck["optimizer"]["param_groups"][0]["schedule"] == spec
    assert ck["sha256"] == T.checkpoint_digest(ck)


# --- bounded solves -------------------------------------------------------------------------------
def test_stiff_ode_optimizer_step_stops_within_its_budget():
    """SGD at lr = 1e5 on a 3→2 least-squares problem: dopri5 stops after max_steps steps
    (≤ 6 evaluations each, plus the first), and the parameters stay where the step began."""
    from fluxode.ode_optimizer import ODEOptimizer

    torch.manual_seed(0)
    A, b = torch.randn(3, 2), torch.randn(3)
    w = torch.nn.Parameter(torch.zeros(2))
    opt = ODEOptimizer([w], "sgd", "dopri5", lr=1e5, max_steps=40)

    def closure():
        opt.zero_grad()
        loss = ((A @ w - b) ** 2).sum()
        loss.backward()
        return loss
    with pytest.raises(IntegrationError, match="max_steps=40"):
        opt.step(closure)
    assert opt.last_nfe <= 6 * 41 + 2
    assert torch.equal(w.detach(), torch.zeros(2))


def test_stiff_continuous_sweep_stops_within_its_budget():
    from fluxode.sweep import sweep_continuous

    start = time.perf_counter()
    with pytest.raises(IntegrationError, match=r"max_steps=50.*\{'lr': 100000\.0\}|"
                                               r"\{'lr': 100000\.0\}.*max_steps=50"):
        sweep_continuous("sgd", "quadratic", {"lr": [0.1, 1e5]}, T=5.0, method="dopri5",
                         max_steps=50)
    assert time.perf_counter() - start < 60


def test_integrate_bounds(monkeypatch):
    import fluxode.integrate as I
    from fluxode.integrate import BudgetError, integrate

    with pytest.raises(BudgetError, match="step_size=1e-12"):
        integrate("sgd", "quadratic", T=10.0, method="rk4", step_size=1e-12)
    with pytest.raises(IntegrationError, match="max_steps=100"):
        integrate("sgd", "quadratic", T=1e12, max_steps=100)
    monkeypatch.setattr(I, "MAX_SAVED_BYTES", 10_000)  # the check, without allocating GiBs
    with pytest.raises(BudgetError, match="saving 1001 points"):
        integrate("sgd", "quadratic", T=1000.0)
    integrate("sgd", "quadratic", T=10.0)


def test_sweep_discrete_marks_and_reports_diverged_points():
    from fluxode.sweep import sweep_discrete

    with pytest.warns(RuntimeWarning, match=r"1 of 2 points diverged.*'lr': 10000\.0"):
        r = sweep_discrete("sgd", "ravine", {"lr": [0.01, 1e4]}, steps=200)
    assert r.diverged.tolist() == [False, True]
    assert r.stats["diverged"][0]["point"] == {"lr": 1e4}
    assert torch.isfinite(r.W[0]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not sweep_discrete("sgd", "ravine", {"lr": [0.01]}, steps=20).diverged.any()


# --- subprocesses: SIGKILL and resume, concurrent runs --------------------------------------------
def _cmd(out, *extra):
    return [sys.executable, "-m", "fluxode", "train", "--method", "rk4", "--model", "logreg",
            "--batch-size", "32", "--checkpoint-every", "3", "--seed", "4", "--epochs", "3",
            "--out", str(out), "--json", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["linear:120:0.1", "cosine:100", "warmup:10:cosine:100"])
def test_scheduled_run_killed_mid_run_resumes_bit_for_bit(spec, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(killed, "--schedule", spec), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = killed / T.CHECKPOINT
    deadline = time.monotonic() + 300
    while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / T.MODEL).exists()
    state = torch.load(ck, weights_only=True)
    assert 0 < state["progress"]["step"] < 3 * 43
    assert (killed / io.LOCK).exists()  # the killed run's lock: stale, reported on resume

    resumed = subprocess.run(_cmd(killed, "--schedule", spec, "--resume"), env=ENV,
                             capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "stale lock" in resumed.stderr
    cfg = T.TrainConfig(method="rk4", model="logreg", batch_size=32, checkpoint_every=3,
                        seed=4, epochs=3, options={"schedule": spec})
    T.train(cfg, tmp_path / "ref")
    a = torch.load(killed / T.MODEL, weights_only=True)
    b = torch.load(tmp_path / "ref" / T.MODEL, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(json.loads((killed / "metrics.json").read_text())["history"]) == \
        drop(json.loads((tmp_path / "ref" / "metrics.json").read_text())["history"])
    assert not list(killed.glob("*.tmp")) and not (killed / io.LOCK).exists()


@pytest.mark.slow
def test_second_concurrent_run_is_refused_and_the_first_finishes_intact(tmp_path, capsys):
    """The first run in a subprocess; while it holds the directory, a second fresh run and a
    --resume (in this process) are refused at start; the first then finishes intact."""
    out = tmp_path / "shared"
    argv = ["--method", "rk4", "--model", "mlp", "--batch-size", "32", "--checkpoint-every",
            "5", "--seed", "4", "--epochs", "6", "--out", str(out), "--json"]
    first = subprocess.Popen([sys.executable, "-m", "fluxode", "train", *argv], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / T.CHECKPOINT).exists() and first.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.002)
    capsys.readouterr()
    codes = [cli.main(["train", *argv]), cli.main(["train", *argv, "--resume"]),
             cli.main(["train", *argv, "--overwrite"])]
    assert first.poll() is None, "the first run ended before the others were tried"
    err = capsys.readouterr().err
    assert codes == [2, 2, 2], err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all("is in use by another run" in ln and f"pid {first.pid}" in ln
                                   for ln in lines), err
    outs, errs = first.communicate(timeout=900)
    assert first.returncode == 0, errs
    summary = json.loads(outs)
    assert summary["steps"] == 6 * 43
    assert json.loads((out / T.SUMMARY).read_text()) == summary
    ck = torch.load(out / T.CHECKPOINT, weights_only=True)
    assert ck["sha256"] == T.checkpoint_digest(ck) and ck["progress"]["epoch"] == 6
    model = torch.load(out / T.MODEL, weights_only=True)
    assert all(torch.equal(model[k], ck["model"][k]) for k in model)  # one run's outputs
    hist = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in hist] == list(range(1, 7))
    assert not list(out.glob("*.tmp")) and not (out / io.LOCK).exists()


@pytest.mark.slow
def test_sigint_is_one_line_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    # SIGINT's default action in the child: a parent that ignores SIGINT (pytest-xdist's
    # workers, a shell's background job) passes SIG_IGN on through exec, and Python then
    # installs no KeyboardInterrupt handler — the run would rightly ignore the signal
    proc = subprocess.Popen(_cmd(out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (out / T.CHECKPOINT).exists() and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().count("\n") == 0 and "interrupted" in err and "Traceback" not in err
    assert not (out / io.LOCK).exists()
    resumed = subprocess.run(_cmd(out, "--resume"), env=ENV, capture_output=True, text=True,
                             timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr


def test_pickle_module_is_not_needed_to_read_a_checkpoint(finished):
    """weights_only=True reads it; so does a plain unpickler restricted to torch's safe set."""
    ck = torch.load(finished / T.CHECKPOINT, weights_only=True)
    assert ck["format"] == T.FORMAT and ck["version"] == T.VERSION
    assert ck["config"]["options"] == {"schedule": "cosine:40"}
    pickle.dumps(ck["config"])  # plain Python data
