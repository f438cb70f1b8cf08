"""The memory-traffic floor the ODE-optimizer bench prints (``engine.bench.traffic_floor``),
counted by hand from the tableaus: the field fused with the stage combination after it."""

import pytest

from fluxode.engine.bench import traffic_floor

S, P = 3.0, 1.0  # AdamW: the state is W, m, v; g and W are one third of it


def test_euler_reads_the_state_and_g_and_writes_the_new_state():
    assert traffic_floor("euler", 1, S, P) == 2 * S + P


def test_midpoint_never_stores_its_first_slope():
    # y₁ᐟ₂ = y₀ + Δτ/2·k₀ (k₀ in registers: b₀ = 0), y₁ = y₀ + Δτ·k₁: read y₀, y₁ᐟ₂, y₀ and
    # write y₁ᐟ₂, y₁; g twice; W into the model once
    assert traffic_floor("midpoint", 2, S, P) == 5 * S + 2 * P + 2 * P


def test_rk4_three_eighths_rule_by_hand():
    # k₀: read y₀, write k₀ and y₁ (3); k₁: read y₁, y₀, k₀, write k₁, y₂ (5); k₂: read y₂, y₀,
    # k₀, k₁, write k₂, y₃ (6); k₃: read y₃, y₀, k₀, k₁, k₂, write the new state (6)
    assert traffic_floor("rk4", 4, S, P) == 20 * S + 4 * P + 2 * P * 3
    # two optimizer steps' worth: per-step counts scale, W goes into the model 7 times
    assert traffic_floor("rk4", 8, S, P) == 40 * S + 8 * P + 2 * P * 7


def test_dopri5_is_first_same_as_last_and_reads_its_error_weights():
    # six evaluations per solver step (the seventh slope is the next step's first)
    one = traffic_floor("dopri5", 6, S, 0.0)
    assert traffic_floor("dopri5", 12, S, 0.0) == pytest.approx(2 * one)
    # no stored slope is read twice by one combination, none is read before it is written:
    # bounded below by reading every stage input and writing every next one
    assert 2 * 6 * S < one < 7 * 7 * S
