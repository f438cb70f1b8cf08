"""fluxode train: outputs, kill-and-resume bit for bit, divergence, malformed input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fluxode import cli
from fluxode import train as T

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _temporaries(d: Path) -> list[Path]:
    return [p for p in d.rglob("*.tmp")]


@pytest.mark.slow
def test_train_writes_outputs_and_json_summary(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--flow", "adamw", "--method", "rk4", "--model", "logreg",
                   "--epochs", "2", "--batch-size", "128", "--out", str(out), "--json",
                   "--compare-discrete"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("test_accuracy", "final_loss", "nfe_per_step", "seconds"):
        assert isinstance(summary[key], float)
    assert summary["nfe_per_step"] == 4.0
    assert summary["discrete"]["nfe_per_step"] == 1.0
    assert summary["test_accuracy"] > 0.85
    for name in T.OUTPUTS + ("compare.png",):
        assert (out / name).stat().st_size > 0, name
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,train_loss") and len(rows) == 3
    hist = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in hist] == [1, 2] and hist[1]["train_loss"] < hist[0]["train_loss"]
    assert (out / "discrete" / "model.pt").exists()
    assert not _temporaries(out)


def test_resume_in_process_matches_an_uninterrupted_run(tmp_path):
    """A run stopped after epoch 1 (by asking for 1 epoch) and resumed to 2 equals a 2-epoch
    run, weights and metrics (dopri5: adaptive, still deterministic)."""
    cfg = {"method": "dopri5", "model": "logreg", "batch_size": 100, "checkpoint_every": 4, "seed": 3}
    full = T.train(T.TrainConfig(epochs=2, **cfg), tmp_path / "full")
    T.train(T.TrainConfig(epochs=1, **cfg), tmp_path / "part")
    part = T.train(T.TrainConfig(epochs=2, **cfg), tmp_path / "part", resume=True)
    for k, v in torch.load(tmp_path / "full" / "model.pt").items():
        assert torch.equal(v, torch.load(tmp_path / "part" / "model.pt")[k])
    assert part["final_loss"] == full["final_loss"]
    assert part["test_accuracy"] == full["test_accuracy"]


ARGS = ["--flow", "adamw", "--method", "rk4", "--dataset", "digits", "--model", "mlp",
        "--epochs", "4", "--batch-size", "64", "--checkpoint-every", "7", "--seed", "1",
        "--json"]


def _train(out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fluxode", "train", *ARGS, "--out", str(out),
                           *extra], env=ENV, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path):
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    proc = subprocess.Popen([sys.executable, "-m", "fluxode", "train", *ARGS,
                             "--out", str(killed)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ck = killed / T.CHECKPOINT
    deadline = time.monotonic() + 300
    while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / T.MODEL).exists()  # it was killed mid-run
    state = torch.load(ck, weights_only=True)  # whatever moment it died at, the file is whole
    assert state["progress"]["batch"] > 0  # mid-epoch
    assert state["progress"]["step"] < 4 * 22

    resumed = _train(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    done = _train(ref)
    assert done.returncode == 0, done.stderr

    a, b = torch.load(killed / T.MODEL), torch.load(ref / T.MODEL)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((killed / "metrics.json").read_text())["history"]
    hb = json.loads((ref / "metrics.json").read_text())["history"]
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert drop(ha) == drop(hb)
    assert json.loads(resumed.stdout)["test_accuracy"] >= 0.95
    assert not _temporaries(killed) and not _temporaries(ref)
    torch.load(killed / T.CHECKPOINT, weights_only=True)


def test_divergent_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    """Coupled decay with η·λ = 100: rk4 multiplies W by R(-100) ≈ 4e6 per step, float32
    overflows within a few steps."""
    out = tmp_path / "div"
    rc = cli.main(["train", "--flow", "sgd", "--method", "rk4", "--model", "logreg",
                   "--lr", "100", "--weight-decay", "1", "--checkpoint-every", "2",
                   "--epochs", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "diverged" in err and "last good checkpoint is kept" in err and "lr=100" in err
    ck = torch.load(out / T.CHECKPOINT, weights_only=True)
    assert ck["progress"]["step"] >= 2
    assert all(bool(torch.isfinite(v).all()) for v in ck["model"].values())
    assert not (out / T.MODEL).exists()
    assert not _temporaries(out)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    T.train(T.TrainConfig(method="discrete", model="logreg", epochs=1, batch_size=256), out)
    return out


def _bad(argv, out, capsys, match):
    before = _snapshot(out) if out.exists() else None
    rc = cli.main(["train", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and err.count("\n") == 1, err
    assert (_snapshot(out) if out.exists() else None) == before


def test_malformed_inputs_leave_outputs_untouched(finished_run, tmp_path, capsys):
    base = ["--method", "discrete", "--model", "logreg", "--epochs", "2", "--batch-size", "256"]
    _bad(base + ["--dataset", "mnist", "--resume"], finished_run, capsys,
         "dataset must be one of")
    _bad(base + ["--dataset", "mnist"], tmp_path / "never", capsys, "dataset must be one of")
    assert not (tmp_path / "never").exists()
    _bad(base + ["--flow", "sgd", "--resume"], finished_run, capsys,
         "belongs to a different run (flow: checkpoint 'adamw', this run 'sgd')")
    _bad(["--method", "rk4"] + base[2:] + ["--resume"], finished_run, capsys,
         "method: checkpoint 'discrete', this run 'rk4'")
    _bad(base + ["--model", "resnet"], finished_run, capsys, "model must be one of")
    _bad(base + ["--batch-size", "0"], finished_run, capsys, "batch_size must be")
    _bad(base + ["--lr", "-1"], finished_run, capsys, "lr must be")

    for name, damage in (("corrupt", lambda b: b"not a checkpoint" * 10),
                         ("truncated", lambda b: b[: len(b) // 2])):
        d = tmp_path / name
        d.mkdir()
        for f, data in _snapshot(finished_run).items():
            (d / f).write_bytes(damage(data) if f == T.CHECKPOINT else data)
        _bad(base + ["--resume"], d, capsys, "is corrupt or not a fluxode checkpoint")
    _bad(base + ["--resume"], tmp_path / "empty", capsys, "no checkpoint at")


def test_flow_hyperparameter_flags_reach_the_flow_and_the_checkpoint_identity(tmp_path):
    """--momentum/--nesterov go to the flow; a checkpoint from other options is refused."""
    from fluxode import cli

    out = tmp_path / "run"
    args = ["train", "--flow", "sgd", "--method", "discrete", "--dataset", "iris", "--model",
            "logreg", "--epochs", "1", "--batch-size", "32", "--lr", "0.1", "--out", str(out),
            "--json"]
    assert cli.main(args + ["--momentum", "0.9", "--nesterov"]) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["config"]["options"] == {"momentum": 0.9, "nesterov": True}
    before = (out / "checkpoint.pt").read_bytes()
    assert cli.main(args + ["--momentum", "0.5", "--resume"]) == 2
    assert (out / "checkpoint.pt").read_bytes() == before
    assert cli.main(args + ["--momentum", "1.5"]) == 2  # refused by the flow's validation
