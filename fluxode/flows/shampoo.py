"""Shampoo (Gupta, Koren & Singer 2018, "Shampoo: Preconditioned Stochastic Tensor Optimization")
as a flow: the paper's Algorithm 2 (Algorithm 1 for matrices), exactly.

For a parameter W of order k with dimensions n₁ … n_k and gradient G, one step is

    Hᵢ ← Hᵢ + G₍ᵢ₎G₍ᵢ₎ᵀ   (i = 1 … k; G₍ᵢ₎ the mode-i unfolding, Hᵢ(0) = εI)
    W  ← W - η·G ×₁ H₁^{-1/2k} ×₂ … ×_k H_k^{-1/2k}

(a matrix: L ← L + GGᵀ, R ← R + GᵀG, W ← W - η·L^{-1/4}GR^{-1/4}; a vector: full-matrix
AdaGrad, H ← H + ggᵀ, W ← W - η·H^{-1/2}g; a scalar is a vector of length 1). There is no
torch or package twin: the reference is the paper's update written as a plain loop in
``tests/test_zoo_modern.py`` (heavyball's Shampoo/SOAP run in float32 storage with eigenbasis
refreshes every few steps: a different discrete map).

As an ODE on the step clock (the accumulators first, then W with the new ones):

    Ḣᵢ = G₍ᵢ₎G₍ᵢ₎ᵀ,   Hᵢ(0) = εI            Ẇ = -η(τ)·G ×ᵢ Hᵢ^{-1/2k}

The start is regular: Hᵢ(0) = εI is symmetric positive definite and stays so (Ḣᵢ ⪰ 0), and
H ↦ H^{-1/2k} is analytic on SPD matrices, so the field is smooth (order 1 along ``rates``).
Matrix powers use ``torch.linalg.eigh``: Q·diag(λ^{-1/2k})·Qᵀ.

State: the k factors of each tensor, laid end to end in one vector H of length Σ nᵢ² (one
``Var`` whatever W's order).

Limits: betas-fixed has no β to hold: with lr → h·lr the accumulators grow like τ/h, the
steps like h·(h/τ)^{1/2}: the flow freezes (refused). sqrt: not declared.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import validation as check
from .base import Block, Flow, Var
from .rates import Linear, Term


def _dims(shape) -> tuple[int, ...]:
    return tuple(shape) if len(shape) else (1,)


def _h_shape(shape):
    return (sum(n * n for n in _dims(shape)),)


def factors(H: Tensor, shape) -> list[Tensor]:
    """The k factor matrices of the flat accumulator H (views)."""
    out, off = [], 0
    for n in _dims(shape):
        out.append(H[off:off + n * n].view(n, n))
        off += n * n
    return out


def unfold(G: Tensor, i: int) -> Tensor:
    """The mode-i unfolding G₍ᵢ₎ (nᵢ × ∏_{j≠i} nⱼ)."""
    return G.movedim(i, 0).reshape(G.shape[i], -1)


def inverse_root(H: Tensor, p: float) -> Tensor:
    """H^{-1/p} for symmetric positive definite H, by eigh."""
    lam, Q = torch.linalg.eigh(H)
    return (Q * lam.pow(-1.0 / p)) @ Q.T


def precondition(G: Tensor, Hs: list[Tensor]) -> Tensor:
    """G ×₁ H₁^{-1/2k} … ×_k H_k^{-1/2k} (matrices: L^{-1/4} G R^{-1/4})."""
    k = len(Hs)
    roots = [inverse_root(H, 2 * k) for H in Hs]
    if G.dim() == 2:
        return roots[0] @ G @ roots[1]
    X = G.reshape(_dims(G.shape))
    for i, P in enumerate(roots):
        X = torch.tensordot(P, X, dims=([1], [i])).movedim(0, i)
    return X.reshape(G.shape)


class Shampoo(Flow):
    name = "shampoo"
    summary = "Shampoo: Kronecker-factored full-matrix AdaGrad (Gupta et al. 2018, Alg. 2)"
    default_lr = 1e-2
    tensorwise = True

    def __init__(self, lr=None, eps=1e-4, weight_decay=0.0, *, maximize=False, schedule=None,
                 max_grad_norm=None):
        super().__init__(lr, weight_decay=weight_decay, maximize=maximize, schedule=schedule,
                         max_grad_norm=max_grad_norm)
        self.eps = check.positive("eps", eps)

    def variables(self):
        def init(W, g0):
            H = torch.zeros(_h_shape(W.shape), dtype=W.dtype, device=W.device)
            for F in factors(H, W.shape):
                F.diagonal().fill_(self.eps)
            return H

        return (Var("H", _h_shape, init),)

    def blocks(self):
        def accumulate(tau, S, g):
            G = g.reshape(_dims(g.shape))
            inc = torch.cat([(lambda U: U @ U.T)(unfold(G, i)).reshape(-1)
                             for i in range(G.dim())])
            return (Linear((Term(1.0, inc),)),)

        def position(tau, S, g):
            u = precondition(g, factors(S["H"], g.shape))
            return (Linear((Term(-self.eta(tau), u),)),)

        return [Block(("H",), accumulate), Block(("W",), position)]

    def equations(self):
        return [f"Ḣᵢ = G₍ᵢ₎G₍ᵢ₎ᵀ,  Hᵢ(0) = εI   (one factor per dimension of W)     ε={self.eps:g}",
                "Ẇ  = -η(τ)·G ×₁ H₁^{-1/2k} ×₂ … ×ₖ Hₖ^{-1/2k}    (k = W's order; "
                "matrix: L^{-1/4} G R^{-1/4})"]

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps": self.eps}

    @classmethod
    def invalid_options(cls):
        return super().invalid_options() + [{"eps": 0.0}, {"eps": math.nan}]
