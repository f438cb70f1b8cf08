"""Training with an ODE integrator against the discrete optimizer, same network and data.

An MLP (64 tanh units) on digits, same seed and minibatch order for every run:

    AdamW, discrete            torch.optim.AdamW's step (partitioned Euler, h = 1)
    AdamW flow, rk4            the AdamW ODE integrated over each step, 4 gradient evals/step
    AdamW flow, dopri5         the same, adaptive (rtol 1e-3)
    SGD, discrete              plain gradient descent
    gradient flow, rk4         Ẇ = -η∇L integrated over each step (the SGD flow)

Reports final test accuracy, loss curves, gradient evaluations and wall time per epoch.

    python experiments/train_ode_vs_discrete.py --out results/train_ode [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fluxode import io
from fluxode.train import TrainConfig, train

RUNS = {
    "AdamW, discrete": {"flow": "adamw", "method": "discrete", "lr": 1e-2},
    "AdamW flow, rk4": {"flow": "adamw", "method": "rk4", "lr": 1e-2},
    "AdamW flow, dopri5": {"flow": "adamw", "method": "dopri5", "lr": 1e-2},
    "SGD, discrete": {"flow": "sgd", "method": "discrete", "lr": 0.1},
    "gradient flow, rk4": {"flow": "sgd", "method": "rk4", "lr": 0.1},
}


def run(out: Path, epochs: int, batch_size: int = 64, seed: int = 0) -> dict:
    results = {}
    for name, kw in RUNS.items():
        cfg = TrainConfig(dataset="digits", model="mlp", epochs=epochs, batch_size=batch_size,
                          seed=seed, checkpoint_every=10**6, **kw)
        slug = name.lower().replace(", ", "-").replace(" ", "-")
        summary = train(cfg, out / "runs" / slug, progress=False)
        hist = json.loads((out / "runs" / slug / "metrics.json").read_text())["history"]
        steps_per_epoch = hist[0]["step"]
        times = [r["seconds"] for r in hist]
        results[name] = {
            "config": kw, "test_accuracy": summary["test_accuracy"],
            "final_loss": summary["final_loss"], "nfe_per_step": summary["nfe_per_step"],
            "nfe_per_epoch": summary["nfe_per_step"] * steps_per_epoch,
            "seconds_per_epoch": times[-1] / len(times),
            "history": hist}
        print(f"{name:<22} test acc {summary['test_accuracy']:.4f}  loss "
              f"{summary['final_loss']:.4f}  {summary['nfe_per_step']:5.2f} evals/step  "
              f"{times[-1] / len(times):6.2f} s/epoch", flush=True)
    return results


def plot(results: dict, path: Path, title: str) -> None:
    from fluxode import plotting

    plotting.save(plotting.training_runs(results, title=title), path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/train_ode_vs_discrete")
    p.add_argument("--quick", action="store_true", help="2 epochs (under a minute)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 10)
    import torch

    torch.set_num_threads(1)  # a 64-unit MLP: extra threads only add synchronization
    out = Path(args.out)
    results = run(out, epochs, seed=args.seed)
    title = f"MLP on digits, {epochs} epochs, batch 64: ODE-integrated vs discrete training"
    io.write_json(out / "train_ode_vs_discrete.json",
                  {"epochs": epochs, "seed": args.seed, "runs": results})
    plot(results, out / "train_ode_vs_discrete.png", title)
    print(f"wrote {out / 'train_ode_vs_discrete.json'} and {out / 'train_ode_vs_discrete.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
