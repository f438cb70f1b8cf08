"""Train a network on a bundled dataset with an ODE-integrated (or discrete) optimizer flow.

Example:  fluxode train --flow adamw --method rk4 --dataset digits --model mlp \\
              --epochs 5 --batch-size 64 --out runs/adamw-rk4

Writes checkpoint.pt (every --checkpoint-every steps, atomically), model.pt, metrics.csv,
metrics.json, learning_curves.png and summary.json to --out. --resume continues from the
checkpoint and ends with the same weights, bit for bit, as an uninterrupted run (fixed-step
and discrete methods). --compare-discrete also trains the discrete twin (same flow, seed,
data order) in OUT/discrete and plots both in OUT/compare.png. A divergent run exits 1 and
keeps the last good checkpoint; malformed input exits 2 before anything is written.

One run owns --out at a time (OUT/.fluxode.lock: a second run on it is refused; a lock left by a
killed run is reported and taken over). A fresh run refuses an --out that holds a run's outputs:
continue it with --resume or replace it with --overwrite. --max-steps bounds each optimizer
step of an adaptive --method (dopri5, ...): a stiff step stops with a clear message.

Data-parallel:  torchrun --nproc_per_node=2 -m fluxode train ... (gloo on CPU): each minibatch
is sharded across the ranks, gradients are all-reduced in every solver evaluation, rank 0
writes the outputs; --resume works the same way.
"""

from __future__ import annotations

import json
import sys

from .. import distributed
from .. import train as T
from .hyperparameters import add_flags, collect

OWN = ("lr", "weight_decay", "max_grad_norm")  # TrainConfig fields of their own


def add_arguments(p):
    d = T.TrainConfig()
    p.add_argument("--flow", default=d.flow, help=f"optimizer flow (default {d.flow})")
    p.add_argument("--method", default=d.method,
                   help="'discrete' (torch.optim's step) or a torchdiffeq method: rk4, euler, "
                        f"midpoint, dopri5, ... (default {d.method})")
    p.add_argument("--dataset", default=d.dataset, help="digits, iris or breast_cancer")
    p.add_argument("--model", default=d.model, help="mlp (64 tanh hidden units) or logreg")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default: the flow's (AdamW 1e-2, others 0)")
    p.add_argument("--max-grad-norm", type=float, default=None,
                   help="clip the gradient inside every field evaluation")
    p.add_argument("--substeps", type=int, default=d.substeps,
                   help="fixed-step methods: solver steps per optimizer step")
    p.add_argument("--rtol", type=float, default=d.rtol, help="adaptive methods")
    p.add_argument("--atol", type=float, default=d.atol, help="adaptive methods")
    p.add_argument("--dtype", default=d.dtype, choices=sorted(T.DTYPES))
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="optimizer steps between checkpoints")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its outputs are removed)")
    p.add_argument("--max-steps", type=int, default=d.max_steps,
                   help="adaptive methods: solver steps allowed per optimizer step "
                        f"(default {d.max_steps})")
    p.add_argument("--compare-discrete", action="store_true",
                   help="also train the discrete twin and plot both (OUT/compare.png)")
    p.add_argument("--json", action="store_true",
                   help="print the final summary as JSON (no progress bar)")
    add_flags(p, skip=OWN)  # momentum, betas, eps, …: passed to the flow


def run(args) -> int:
    config = T.TrainConfig(
        flow=args.flow, method=args.method, dataset=args.dataset, model=args.model,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        substeps=args.substeps, rtol=args.rtol, atol=args.atol, seed=args.seed,
        checkpoint_every=args.checkpoint_every, dtype=args.dtype, max_steps=args.max_steps,
        options=collect(args, skip=OWN, flow=args.flow)).validate()
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: give one")
    from .. import io

    out = io.check_writable(args.out)
    twin = None
    if args.compare_discrete and config.method != "discrete":
        twin = T.TrainConfig(**{**config.__dict__, "method": "discrete"})
    io.check_not_in_use(out)
    if args.resume:  # refuse a bad checkpoint before writing anything (train checks again)
        T.load_checkpoint(out / T.CHECKPOINT, config)
    T.check_fresh(out, args.resume, args.overwrite)  # on every rank, before torchrun joins
    replicas = distributed.from_env()  # torchrun: join the process group (gloo)
    main = replicas.is_main
    quiet = args.json or not sys.stderr.isatty()
    log = None if args.json or not main else print
    try:
        summary = T.train(config, out, resume=args.resume, progress=not quiet, log=log,
                          replicas=replicas, overwrite=args.overwrite, note=_note)
        if twin is not None:
            tdir = out / "discrete"
            summary["discrete"] = T.train(
                twin, tdir, resume=args.resume and (tdir / T.CHECKPOINT).exists(),
                progress=not quiet, log=log, replicas=replicas,
                overwrite=args.overwrite or args.resume, note=_note)
            if main:
                runs = {f"{config.flow} {config.method}": T._load_history(out),
                        f"{config.flow} discrete": T._load_history(tdir)}
                from ..plotting import plot_learning_curves

                plot_learning_curves(out / "compare.png", runs,
                                     title=f"{config.model} on {config.dataset}: "
                                           "ODE-integrated vs discrete")
    except T.Diverged as err:
        if main:
            print(f"fluxode train: error: {err}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown(replicas)
    if not main:
        return 0
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"test accuracy {summary['test_accuracy']:.4f}, final loss "
              f"{summary['final_loss']:.4f}, {summary['nfe_per_step']:.1f} gradient "
              f"evaluations/step, {summary['seconds']:.1f} s -> {out}")
    return 0


def _note(msg: str) -> None:
    print(f"fluxode train: note: {msg}", file=sys.stderr)
