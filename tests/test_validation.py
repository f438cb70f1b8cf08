"""Property-based: every flow accepts exactly the hyperparameters in its documented range and
refuses the rest with a ValueError that names the parameter."""

from __future__ import annotations

import inspect
import math
from numbers import Real

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxode.flows import FLOWS, make_flow

# parameter -> predicate for the allowed range (the documented contract)
RANGES = {
    "lr": lambda x: 0 <= x < math.inf,
    "weight_decay": lambda x: 0 <= x < math.inf,
    "momentum": lambda x: 0 <= x <= 1,
    "dampening": lambda x: 0 <= x <= 1,
    "eps": lambda x: 0 < x < math.inf,
    "alpha": lambda x: 0 <= x < 1,
    "lr_decay": lambda x: 0 <= x < math.inf,
    "initial_accumulator_value": lambda x: 0 <= x < math.inf,
    "max_grad_norm": lambda x: 0 < x < math.inf,
}
# where a flow's range differs from the shared one it declares it (``Flow.ranges``: the
# modified flow divides by 1 - μ, ASGD's alpha is an exponent, ...)
BETA = lambda x: 0 <= x < 1  # noqa: E731  each of betas[0], betas[1]
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(-2.0, 2.0), st.sampled_from([0.0, 1.0, -0.0, 1e-300]))


def _allowed(name, param, shared):
    """The flow's declared range for ``param``, else the shared one."""
    declared = FLOWS[name].ranges.get(param)
    return shared if declared is None else (lambda x: x in declared)


def _numeric_params(name):
    """The shared scalar parameters the flow takes as one real number (Adafactor's eps is a
    pair (eps1, eps2), as torch's: its invalid_options cover it)."""
    hp = make_flow(name).hyperparameters()
    takes_clip = "max_grad_norm" in inspect.signature(FLOWS[name]).parameters
    return [p for p in RANGES
            if (p in hp and isinstance(hp[p], Real) and not isinstance(hp[p], bool))
            or (p == "max_grad_norm" and takes_clip)]


CASES = [(name, p) for name in sorted(FLOWS) for p in _numeric_params(name)]


@pytest.mark.parametrize("name,param", CASES)
@settings(max_examples=60, deadline=None)
@given(value=NUMBERS)
def test_numeric_hyperparameter_contract(name, param, value):
    extra = {}
    if name == "sgd" and param == "dampening":
        extra = {"momentum": 0.9}
    allowed = _allowed(name, param, RANGES[param])
    ok = (not math.isnan(value)) and allowed(value)
    if ok:
        make_flow(name, **extra, **{param: value})
    else:
        with pytest.raises(ValueError, match=param):
            make_flow(name, **extra, **{param: value})


ADAM_LIKE = [n for n in sorted(FLOWS) if "betas" in make_flow(n).hyperparameters()]


@pytest.mark.parametrize("name", ADAM_LIKE)
@settings(max_examples=80, deadline=None)
@given(b1=NUMBERS, b2=NUMBERS)
def test_betas_contract(name, b1, b2):
    ok = all(not math.isnan(b) and _allowed(name, f"betas[{i}]", BETA)(b)
             for i, b in enumerate((b1, b2)))
    if ok:
        make_flow(name, betas=(b1, b2))
    else:
        with pytest.raises(ValueError, match="betas"):
            make_flow(name, betas=(b1, b2))


@pytest.mark.parametrize("name", sorted(FLOWS))
@settings(max_examples=30, deadline=None)
@given(value=st.one_of(st.text(max_size=3), st.none(), st.lists(st.floats(), max_size=2)))
def test_non_numbers_are_refused(name, value):
    with pytest.raises(ValueError, match="lr"):
        make_flow(name, lr=value if value is not None else "none")


@settings(max_examples=40, deadline=None)
@given(momentum=st.floats(0, 1), dampening=st.floats(0, 1), nesterov=st.booleans())
def test_nesterov_consistency_matches_torch(momentum, dampening, nesterov):
    import torch

    p = [torch.nn.Parameter(torch.zeros(1))]
    try:
        torch.optim.SGD(p, lr=0.1, momentum=momentum, dampening=dampening, nesterov=nesterov)
        torch_ok = True
    except ValueError:
        torch_ok = False
    if torch_ok:
        make_flow("sgd", momentum=momentum, dampening=dampening, nesterov=nesterov)
    else:
        with pytest.raises(ValueError, match="nesterov"):
            make_flow("sgd", momentum=momentum, dampening=dampening, nesterov=nesterov)
