"""Problems: gradient oracles over one flat parameter vector W.

A ``Problem`` gives ``loss(W)``, ``grad(W, tau)``, ``hessian(W)``, ``dim`` and a default start
``x0()``. Analytic landscapes have known answers:

    quadratic   L(W) = ½(W - W*)ᵀA(W - W*)          (``ravine``: eigenvalues 1 and 100, rotated)
    rosenbrock  L(x, y) = (a - x)² + b(y - x²)²
    linear      L(W) = cᵀW

Closed forms on a quadratic (eigenpairs A = QΛQᵀ, z = Qᵀ(W - W*)), used as ground truth:

    gradient flow   Ẇ = -ηg:                   W(τ) = W* + e^{-ηAτ}(W₀ - W*)
    heavy ball      ḃ = (1-d)g - (1-μ)b, Ẇ = -ηb:
                    z̈ + (1-μ)ż + η(1-d)λz = 0,  z(0) = z₀,  ż(0) = -η·Qᵀb₀
    Su–Boyd–Candès  Ẍ + (3/t)Ẋ + AX = 0, t = τ√s:  zᵢ(t) = 2z₀ᵢ·J₁(√λᵢ t)/(√λᵢ t)

Models: ``ModuleProblem`` wraps any ``nn.Module`` + loss + data, full batch or a fixed sequence
of minibatches. With minibatches the gradient is piecewise constant in the data: on
τ ∈ [k, k+1) the oracle uses batch k mod K, so the h = 1 Euler step at τ = k sees batch k —
exactly what a torch.optim loop over the same batches does. ``jump_times`` tells solvers where
the field jumps. Parameters are views into W (``torch.func.functional_call``), so autograd
returns the gradient as one flat tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn


class Problem:
    """A loss over a flat parameter vector W of length ``dim``."""

    name: str = "problem"
    dim: int
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")
    minimizer: Tensor | None = None

    def loss(self, W: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def grad(self, W: Tensor, tau: float = 0.0) -> Tensor:
        """∇L(W) (for minibatch problems: the batch active at step-clock time τ)."""
        W = W.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss(W), W)
        return g

    def hessian(self, W: Tensor) -> Tensor:
        """∇²L(W) as a dim × dim matrix (autograd unless a subclass knows it)."""
        return torch.autograd.functional.hessian(lambda w: self.loss(w), W.detach())

    def x0(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- minibatches ------------------------------------------------------------------------
    piecewise: bool = False  # True when the gradient depends on ⌊τ⌋ (a minibatch sequence)

    def jump_times(self, T: float) -> list[float]:
        """Times in (0, T) where the field jumps (the integers, for minibatch sequences)."""
        return [float(k) for k in range(1, math.ceil(T))] if self.piecewise else []

    # --- 2-D helpers ------------------------------------------------------------------------
    bounds: tuple[tuple[float, float], tuple[float, float]] | None = None  # for contour plots

    def check_point(self, W: Tensor, name: str = "x0") -> Tensor:
        """W as this problem's flat parameter vector, or a ValueError saying what is wrong."""
        if not isinstance(W, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
        if W.dtype != self.dtype:
            raise ValueError(f"{name} has dtype {W.dtype} but the problem uses {self.dtype} "
                             "(mismatched dtypes: build the problem with the same dtype)")
        if W.device != self.device:
            raise ValueError(f"{name} is on {W.device} but the problem is on {self.device} "
                             "(mismatched devices)")
        if W.shape != (self.dim,):
            raise ValueError(f"{name} must have shape ({self.dim},), got {tuple(W.shape)}")
        if not torch.isfinite(W).all():
            raise ValueError(f"{name} must be finite, got non-finite entries")
        return W


# --- analytic landscapes ---------------------------------------------------------------------
class Quadratic(Problem):
    """L(W) = ½(W - W*)ᵀA(W - W*) with A symmetric positive definite."""

    def __init__(self, A, W_star=None, start=None, name="quadratic", dtype=torch.float64,
                 device="cpu", bounds=None):
        A = torch.as_tensor(A, dtype=torch.float64)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
        if not torch.allclose(A, A.T):
            raise ValueError("A must be symmetric")
        lam, Q = torch.linalg.eigh(A)
        if lam.min() <= 0:
            raise ValueError(f"A must be positive definite, got eigenvalues down to {lam.min():g}")
        n = A.shape[0]
        self.name, self.dim = name, n
        self.dtype, self.device = dtype, torch.device(device)
        self.A = A.to(dtype=dtype, device=self.device)
        self.eigenvalues, self.Q = lam.to(dtype=dtype, device=self.device), Q.to(dtype=dtype, device=self.device)
        ws = torch.zeros(n, dtype=torch.float64) if W_star is None else torch.as_tensor(W_star, dtype=torch.float64)
        self.minimizer = ws.to(dtype=dtype, device=self.device)
        st = torch.ones(n, dtype=torch.float64) if start is None else torch.as_tensor(start, dtype=torch.float64)
        self._x0 = st.to(dtype=dtype, device=self.device)
        self.bounds = bounds

    def loss(self, W):
        d = W - self.minimizer
        return 0.5 * d @ (self.A @ d)

    def loss_batch(self, P):
        D = P - self.minimizer
        return 0.5 * ((D @ self.A) * D).sum(1)

    def grad(self, W, tau=0.0):
        return self.A @ (W - self.minimizer)

    def hessian(self, W):
        return self.A.clone()

    def x0(self):
        return self._x0.clone()

    # --- closed forms (float64 ground truth) --------------------------------------------------
    def _coords(self, x0):
        x0 = self._x0 if x0 is None else x0
        Q = self.Q.double()
        return Q, Q.T @ (x0.double() - self.minimizer.double())

    def gradient_flow_solution(self, tau, lr: float = 1.0, x0=None) -> Tensor:
        """W(τ) = W* + e^{-ηAτ}(W₀ - W*) for Ẇ = -η∇L; τ scalar or 1-D (rows per time)."""
        taus = torch.atleast_1d(torch.as_tensor(tau, dtype=torch.float64))
        Q, z0 = self._coords(x0)
        lam = self.eigenvalues.double()
        z = torch.exp(-lr * lam[None, :] * taus[:, None]) * z0
        return _rows(tau, self.minimizer.double() + z @ Q.T)

    def heavy_ball_solution(self, tau, lr: float, momentum: float, dampening: float = 0.0,
                            x0=None, b0=None) -> Tensor:
        """Heavy-ball flow ḃ = (1-d)g - (1-μ)b, Ẇ = -ηb: per eigen-direction the damped
        oscillator z̈ + γż + ω²z = 0 (γ = 1-μ, ω² = η(1-d)λ), z(0) = z₀, ż(0) = -η·(Qᵀb₀)."""
        taus = torch.atleast_1d(torch.as_tensor(tau, dtype=torch.float64)).numpy()
        Q, z0 = self._coords(x0)
        q0 = np.zeros(self.dim) if b0 is None else (Q.T @ b0.double()).numpy()
        z0 = z0.numpy()
        gamma = 1.0 - momentum
        out = np.empty((len(taus), self.dim))
        for i, lam in enumerate(self.eigenvalues.double().numpy()):
            w2 = lr * (1 - dampening) * lam
            v0 = -lr * q0[i]
            disc = gamma * gamma - 4 * w2
            if abs(disc) < 1e-12 * max(gamma * gamma, 4 * w2):   # critical damping
                r = -gamma / 2
                out[:, i] = (z0[i] + (v0 - r * z0[i]) * taus) * np.exp(r * taus)
                continue
            sq = np.sqrt(complex(disc))
            r1, r2 = (-gamma + sq) / 2, (-gamma - sq) / 2
            c1 = (v0 - r2 * z0[i]) / (r1 - r2)
            c2 = z0[i] - c1
            out[:, i] = (c1 * np.exp(r1 * taus) + c2 * np.exp(r2 * taus)).real
        return _rows(tau, self.minimizer.double() + torch.from_numpy(out) @ Q.T)

    def nesterov_ode_solution(self, tau, s: float, x0=None) -> Tensor:
        """Su–Boyd–Candès flow at step-clock τ (t = τ√s): zᵢ = 2z₀ᵢ·J₁(√λᵢt)/(√λᵢt) (scipy)."""
        from scipy.special import j1

        taus = torch.atleast_1d(torch.as_tensor(tau, dtype=torch.float64)).numpy()
        Q, z0 = self._coords(x0)
        u = np.sqrt(self.eigenvalues.double().numpy())[None, :] * (taus[:, None] * math.sqrt(s))
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(u == 0, 0.5, j1(u) / np.where(u == 0, 1, u))
        return _rows(tau, self.minimizer.double() + torch.from_numpy(2 * ratio * z0.numpy()) @ Q.T)


def _rows(tau, W: Tensor) -> Tensor:
    """One row per time; a single vector when τ was a scalar."""
    return W.squeeze(0) if torch.as_tensor(tau).ndim == 0 else W


def ravine(condition: float = 100.0, angle: float = math.pi / 6, dtype=torch.float64,
           device="cpu", start=(-1.7, -0.65)) -> Quadratic:
    """A narrow rotated valley: eigenvalues 1 and ``condition``, axes turned by ``angle``."""
    if not condition >= 1:
        raise ValueError(f"condition must be in [1, inf), got {condition!r}")
    c, s = math.cos(angle), math.sin(angle)
    R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    A = R @ torch.diag(torch.tensor([1.0, float(condition)], dtype=torch.float64)) @ R.T
    A = (A + A.T) / 2
    return Quadratic(A, start=start, name="ravine", dtype=dtype, device=device,
                     bounds=((-2.0, 2.0), (-1.5, 1.5)))


class Rosenbrock(Problem):
    """L(x, y) = (a - x)² + b(y - x²)², minimum at (a, a²)."""

    def __init__(self, a: float = 1.0, b: float = 100.0, start=(-1.2, 1.0), dtype=torch.float64,
                 device="cpu"):
        self.name, self.dim, self.a, self.b = "rosenbrock", 2, float(a), float(b)
        self.dtype, self.device = dtype, torch.device(device)
        self.minimizer = torch.tensor([a, a * a], dtype=dtype, device=self.device)
        self._x0 = torch.as_tensor(start, dtype=dtype).to(self.device)
        self.bounds = ((-2.0, 2.0), (-1.0, 3.0))

    def loss(self, W):
        x, y = W[0], W[1]
        return (self.a - x) ** 2 + self.b * (y - x * x) ** 2

    def loss_batch(self, P):
        x, y = P[:, 0], P[:, 1]
        return (self.a - x) ** 2 + self.b * (y - x * x) ** 2

    def grad(self, W, tau=0.0):
        x, y = W[0], W[1]
        r = y - x * x
        return torch.stack([-2 * (self.a - x) - 4 * self.b * x * r, 2 * self.b * r])

    def hessian(self, W):
        x, y = W[0], W[1]
        h11 = 2 - 4 * self.b * (y - 3 * x * x)
        h12 = -4 * self.b * x
        return torch.stack([torch.stack([h11, h12]), torch.stack([h12, 2 * self.b + 0 * x])])

    def x0(self):
        return self._x0.clone()


class Linear(Problem):
    """L(W) = cᵀW (unbounded below: gradient flow moves at constant velocity -ηc)."""

    def __init__(self, c=(1.0, 0.5), start=None, dtype=torch.float64, device="cpu"):
        self.name, self.dtype, self.device = "linear", dtype, torch.device(device)
        self.c = torch.as_tensor(c, dtype=dtype).to(self.device)
        if self.c.ndim != 1:
            raise ValueError(f"c must be a vector, got shape {tuple(self.c.shape)}")
        self.dim = self.c.numel()
        self._x0 = torch.zeros_like(self.c) if start is None else torch.as_tensor(start, dtype=dtype).to(self.device)
        self.bounds = ((-3.0, 1.0), (-2.0, 1.0))

    def loss(self, W):
        return self.c @ W

    def loss_batch(self, P):
        return P @ self.c

    def grad(self, W, tau=0.0):
        return self.c.clone()

    def hessian(self, W):
        return torch.zeros(self.dim, self.dim, dtype=self.dtype, device=self.device)

    def x0(self):
        return self._x0.clone()


# --- any nn.Module ---------------------------------------------------------------------------
Batch = tuple[Tensor, Tensor]


class ModuleProblem(Problem):
    """``loss_fn(model(x), y)`` over the module's parameters as one flat vector W.

    Give ``data=(x, y)`` (full batch) or ``batches=[(x₀, y₀), (x₁, y₁), …]`` (batch k on
    τ ∈ [k, k+1), cycling). ``loss(W)`` is always the mean over all the data; ``grad(W, τ)``
    uses the active batch. The default start is the module's current parameters."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 data: Batch | None = None, batches: Sequence[Batch] | None = None,
                 name: str = "module"):
        if (data is None) == (batches is None):
            raise ValueError("give exactly one of data=(x, y) or batches=[(x, y), ...]")
        self.model, self.loss_fn, self.name = model, loss_fn, name
        params = dict(model.named_parameters())
        if not params:
            raise ValueError("the model has no parameters")
        first = next(iter(params.values()))
        self.dtype, self.device = first.dtype, first.device
        for k, p in params.items():
            if p.dtype != self.dtype or p.device != self.device:
                raise ValueError(f"parameter {k!r} is {p.dtype} on {p.device}; all parameters "
                                 f"must share {self.dtype} on {self.device}")
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.sizes = [p.numel() for p in params.values()]
        self.dim = sum(self.sizes)
        self._x0 = torch.cat([p.detach().reshape(-1) for p in params.values()])
        self.piecewise = batches is not None
        self.batches = [data] if data is not None else list(batches)
        if not self.batches:
            raise ValueError("batches must not be empty")
        for i, (x, y) in enumerate(self.batches):
            if x.device != self.device or (x.is_floating_point() and x.dtype != self.dtype):
                raise ValueError(f"batch {i}: inputs are {x.dtype} on {x.device}, the model is "
                                 f"{self.dtype} on {self.device} (mismatched dtypes or devices)")

    def unflatten(self, W: Tensor) -> dict[str, Tensor]:
        """Parameter views into W (``split`` so that autograd returns one flat gradient)."""
        return {n: w.view(s) for n, w, s in zip(self.names, W.split(self.sizes), self.shapes)}

    def batch_loss(self, W: Tensor, batch: Batch) -> Tensor:
        x, y = batch
        out = torch.func.functional_call(self.model, self.unflatten(W), (x,))
        return self.loss_fn(out, y)

    def batch_index(self, tau: float) -> int:
        return int(math.floor(float(tau))) % len(self.batches)

    def loss(self, W, tau=None):
        if tau is not None:
            return self.batch_loss(W, self.batches[self.batch_index(tau)])
        if len(self.batches) == 1:
            return self.batch_loss(W, self.batches[0])
        counts = [len(b[1]) for b in self.batches]
        total = sum(c * self.batch_loss(W, b) for c, b in zip(counts, self.batches))
        return total / sum(counts)

    def grad(self, W, tau=0.0):
        W = W.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss(W, tau), W)
        return g

    def hessian(self, W):
        return torch.autograd.functional.hessian(lambda w: self.loss(w), W.detach())

    def x0(self):
        return self._x0.clone()

    def load_into(self, W: Tensor) -> None:
        """Copy W into the module's parameters."""
        with torch.no_grad():
            for p, w in zip(self.model.parameters(), W.split(self.sizes)):
                p.copy_(w.view(p.shape))


def mlp(n_in: int, hidden: Sequence[int], n_out: int, seed: int = 0, dtype=torch.float64,
        activation=nn.Tanh) -> nn.Sequential:
    """A seeded MLP n_in → hidden… → n_out."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers: list[nn.Module] = []
        sizes = [n_in, *hidden]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), activation()]
        layers.append(nn.Linear(sizes[-1], n_out))
        return nn.Sequential(*layers).to(dtype)
    finally:
        torch.random.set_rng_state(gen_state)


def classification(dataset: str = "digits", hidden: Sequence[int] = (), batch_size: int | None = None,
                   dtype=torch.float64, device="cpu", seed: int = 0,
                   max_samples: int | None = None) -> ModuleProblem:
    """Softmax regression (``hidden=()``) or an MLP on a bundled dataset, cross-entropy loss.
    ``batch_size`` splits the (fixed-order) training set into a minibatch sequence."""
    from .datasets import load

    ds = load(dataset, dtype=dtype)
    x, y = ds.x_train.to(device), ds.y_train.to(device)
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    model = mlp(ds.n_features, hidden, ds.n_classes, seed=seed, dtype=dtype).to(device)
    kind = "mlp" if hidden else "logreg"
    if batch_size is None:
        return ModuleProblem(model, nn.functional.cross_entropy, data=(x, y),
                             name=f"{kind}-{dataset}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer in [1, inf), got {batch_size!r}")
    batches = list(zip(x.split(batch_size), y.split(batch_size)))
    return ModuleProblem(model, nn.functional.cross_entropy, batches=batches,
                         name=f"{kind}-{dataset}")


# --- registry --------------------------------------------------------------------------------
def _quadratic(dtype, device):
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    return Quadratic(A, W_star=(0.5, -0.5), start=(-1.5, 1.5), dtype=dtype, device=device,
                     bounds=((-2.0, 2.0), (-2.0, 2.0)))


PROBLEMS: dict[str, Callable[..., Problem]] = {
    "quadratic": _quadratic,
    "ravine": lambda dtype, device: ravine(dtype=dtype, device=device),
    "rosenbrock": lambda dtype, device: Rosenbrock(dtype=dtype, device=device),
    "linear": lambda dtype, device: Linear(dtype=dtype, device=device),
    "logreg-digits": lambda dtype, device: classification("digits", (), dtype=dtype, device=device),
    "mlp-digits": lambda dtype, device: classification("digits", (32,), dtype=dtype, device=device),
}


def make_problem(name: str | Problem, dtype: torch.dtype = torch.float64,
                 device="cpu") -> Problem:
    """A registered problem by name (see ``PROBLEMS``), e.g. ``make_problem("ravine")``."""
    if isinstance(name, Problem):
        return name
    if name not in PROBLEMS:
        raise ValueError(f"problem must be one of {sorted(PROBLEMS)}, got {name!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return PROBLEMS[name](dtype, torch.device(device))
