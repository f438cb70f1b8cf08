"""Largest stable lr on L = ½λw²: bisection on the discrete map vs the closed-form threshold.

GD 2/λ, heavy ball (2+2μ)/λ, Nesterov (2+2μ)/((1+2μ)λ), RMSprop (2+2μ)(√v+ε)/λ and Adam
(2+2β₁)(√v+ε)/((1-β₁)λ) with the second moment v frozen. Example:

    fluxode stability --flow sgd --lam 1 10 100 --momentum 0 0.9
"""

from __future__ import annotations

import json

from ..stability import formula_lr, max_stable_lr


def add_arguments(p):
    p.add_argument("--flow", default="sgd", choices=["sgd", "nesterov", "rmsprop", "adam"],
                   help="sgd (GD / heavy ball), nesterov, rmsprop or adam")
    p.add_argument("--lam", type=float, nargs="+", default=[1.0, 10.0, 100.0],
                   help="curvatures λ")
    p.add_argument("--momentum", type=float, nargs="+", default=[0.0, 0.9],
                   help="momentum μ (β₁ for adam)")
    p.add_argument("--v", type=float, default=1e-2, help="frozen second moment (adam, rmsprop)")
    p.add_argument("--eps", type=float, default=1e-8, help="eps (adam, rmsprop)")
    p.add_argument("--json", action="store_true")


def _hp(flow, mu, eps):
    if flow == "sgd":
        return "sgd", {"momentum": mu}
    if flow == "nesterov":
        if mu <= 0:
            raise ValueError(f"--momentum must be in (0, 1) for nesterov, got {mu}")
        return "sgd", {"momentum": mu, "nesterov": True}
    if flow == "adam":
        return "adam", {"betas": (mu, 0.999), "eps": eps}
    return "rmsprop", {"momentum": mu, "eps": eps}


def run(args) -> int:
    rows = []
    for lam in args.lam:
        for mu in args.momentum:
            name, hp = _hp(args.flow, mu, args.eps)
            num = max_stable_lr(name, lam, v=args.v, **hp)
            ref = formula_lr(name, lam, v=args.v, **hp)
            rows.append({"flow": args.flow, "lam": lam, "momentum": mu, "numerical": num,
                         "formula": ref, "rel_diff": abs(num - ref) / ref})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'flow':<9}{'λ':>9}{'μ':>7}{'bisection':>14}{'formula':>14}{'rel diff':>10}")
    for r in rows:
        print(f"{r['flow']:<9}{r['lam']:>9g}{r['momentum']:>7g}{r['numerical']:>14.8g}"
              f"{r['formula']:>14.8g}{r['rel_diff']:>10.1e}")
    return 0
