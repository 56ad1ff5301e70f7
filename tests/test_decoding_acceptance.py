"""Acceptance statistics in vLLM's conventions (sdlib.decoding.acceptance), checked on hand-counted rounds and
against simulated rounds whose per-position acceptance is known."""
import math

import numpy as np
import pytest

from sdlib.decoding.acceptance import CONVENTION, AcceptanceStats


def stats_of(rounds, plain=0):
    s = AcceptanceStats()
    for accepted, offered in rounds:
        s.add(accepted, offered)
    for _ in range(plain):
        s.add(0, 0)
    return s


def test_hand_counted_rounds():
    s = stats_of([(3, 4), (0, 4), (4, 4), (1, 4)], plain=1)
    assert s.rounds == 4 and s.plain_steps == 1 and s.drafted == 16 and s.accepted_total == 8
    assert s.tau == 3.0 and s.tau_no_bonus == 2.0 and s.acceptance_rate == 0.5
    assert s.histogram() == [1, 1, 0, 1, 1]
    assert s.cumulative() == [0.75, 0.5, 0.5, 0.25]  # rounds accepting >= 1, 2, 3, 4 out of 4
    assert s.conditional() == pytest.approx([3 / 4, 2 / 3, 2 / 2, 1 / 2])
    assert s.tau == pytest.approx(1 + sum(s.cumulative()))  # vLLM's identity
    d = s.to_dict()
    assert d["tau"] == 3.0 and d["convention"] == CONVENTION and "bonus token included" in CONVENTION


def test_dynamic_draft_lengths_condition_on_rounds_that_reached_the_position():
    s = stats_of([(2, 2), (1, 4), (4, 4)])
    # position 3 was reached by the third round only (the first offered 2, the second stopped at 1)
    assert s.conditional() == pytest.approx([1.0, 2 / 3, 1.0, 1.0])
    assert s.cumulative() == pytest.approx([1.0, 2 / 3, 1 / 3, 1 / 3])


def test_merging_requests_weights_every_round():
    a, b = stats_of([(1, 2), (2, 2)]), stats_of([(0, 2)], plain=2)
    m = AcceptanceStats.merged([a, b])
    assert m.rounds == 3 and m.plain_steps == 2 and m.tau == pytest.approx(1 + 3 / 3)
    assert m.histogram() == [1, 1, 1]


def test_simulated_rounds_recover_the_per_position_acceptance():
    """Rounds where draft i is accepted with probability alpha_i given the earlier ones: the conditional rates
    estimate the alphas, and tau matches its expectation."""
    rng = np.random.default_rng(0)
    alphas = [0.8, 0.6, 0.5, 0.3]
    s = AcceptanceStats()
    for _ in range(40_000):
        n = 0
        while n < 4 and rng.random() < alphas[n]:
            n += 1
        s.add(n, 4)
    assert s.conditional() == pytest.approx(alphas, abs=0.015)
    expected_tau = 1 + sum(math.prod(alphas[:i]) for i in range(1, 5))
    assert s.tau == pytest.approx(expected_tau, abs=0.02)


def test_empty_stats_are_nan_not_zero_and_bad_rounds_are_refused():
    s = AcceptanceStats()
    assert math.isnan(s.tau) and math.isnan(s.acceptance_rate) and s.histogram() == [] and s.cumulative() == []
    with pytest.raises(ValueError, match="accepted 3 of 2"):
        s.add(3, 2)
