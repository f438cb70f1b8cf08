"""Flow hyperparameters as command-line flags, under torch.optim's names (shared by commands)."""

from __future__ import annotations

# (flag, hyperparameter name, argparse options)
HYPER = [
    ("--lr", "lr", dict(type=float)),
    ("--momentum", "momentum", dict(type=float)),
    ("--dampening", "dampening", dict(type=float)),
    ("--nesterov", "nesterov", dict(action="store_const", const=True)),
    ("--betas", "betas", dict(type=float, nargs=2, metavar=("B1", "B2"))),
    ("--alpha", "alpha", dict(type=float)),
    ("--eps", "eps", dict(type=float)),
    ("--weight-decay", "weight_decay", dict(type=float)),
    ("--amsgrad", "amsgrad", dict(action="store_const", const=True)),
    ("--centered", "centered", dict(action="store_const", const=True)),
    ("--lr-decay", "lr_decay", dict(type=float)),
    ("--schedule", "schedule", dict(type=str)),
    ("--max-grad-norm", "max_grad_norm", dict(type=float)),
]


def add_flags(parser, skip=()) -> None:
    """One flag per hyperparameter (default None: the flow's own default)."""
    for flag, name, kw in HYPER:
        if name not in skip:
            parser.add_argument(flag, default=None, **kw)


def collect(args, skip=()) -> dict:
    """The hyperparameters given on the command line (tuples for pairs)."""
    hp = {name: getattr(args, flag.lstrip("-").replace("-", "_"))
          for flag, name, _ in HYPER if name not in skip}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in hp.items() if v is not None}
