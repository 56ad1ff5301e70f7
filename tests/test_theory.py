"""sdlib.theory against hand-computed values and Monte Carlo simulation."""
import numpy as np
import pytest

from sdlib import theory as th

TOY = th.Costs(P_v=100.0, d_v=2.0, P_e=40.0, d_e=1.0, verify_slope=1.0)


# ---- one round -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "alpha,gamma,expected",
    [(0.5, 3, 1.875), (0.0, 5, 1.0), (1.0, 4, 5.0), (0.3, 0, 1.0), (0.8, 1, 1.8), (0.9, 2, 1 + 0.9 + 0.81)],
)
def test_expected_tokens_hand_values(alpha, gamma, expected):
    assert th.expected_tokens(alpha, gamma) == pytest.approx(expected, rel=1e-12)


def test_expected_tokens_is_continuous_at_alpha_one():
    assert th.expected_tokens(1 - 1e-9, 4) == pytest.approx(5.0, rel=1e-6)


def test_expected_tokens_vectorised_and_validated():
    out = th.expected_tokens(np.array([0.0, 0.5, 1.0]), 3)
    np.testing.assert_allclose(out, [1.0, 1.875, 4.0])
    with pytest.raises(ValueError, match="alpha"):
        th.expected_tokens(1.5, 2)
    with pytest.raises(ValueError, match="gamma"):
        th.expected_tokens(0.5, -1)


def test_speedup_hand_values():
    assert th.speedup(0.5, 3, 0.1) == pytest.approx(1.875 / 1.3)
    assert th.speedup(0.7, 0, 0.5) == pytest.approx(1.0)  # no drafts: plain decoding
    assert th.speedup(1.0, 4, 0.0) == pytest.approx(5.0)  # free, perfect drafter: gamma + 1


def test_optimal_gamma_hand_value():
    # E(0.8,g)/(1+0.1g): g=5 -> 2.45952, g=6 -> 2.46964, g=7 -> 2.44773
    g, s = th.optimal_gamma(0.8, 0.1)
    assert g == 6
    assert s == pytest.approx((1 - 0.8**7) / 0.2 / 1.6)
    assert th.optimal_gamma(0.3, 0.5) == (0, 1.0)  # alpha < c: do not draft


def test_useful_gamma_rule_matches_brute_force():
    alphas = np.linspace(0.0, 1.0, 51)
    cs = np.linspace(0.01, 1.2, 40)
    for a in alphas:
        for c in cs:
            if abs(a - c) < 1e-9:
                continue
            brute = th.optimal_gamma(a, c, gamma_max=200)[1] > 1.0 + 1e-12
            assert brute == bool(th.useful_gamma_exists(a, c)), (a, c)


@pytest.mark.parametrize("alpha,gamma", [(0.2, 3), (0.6, 5), (0.8, 8), (0.95, 12), (1.0, 4), (0.0, 3)])
def test_expected_tokens_matches_monte_carlo(alpha, gamma):
    mc = th.simulate_round_tokens(alpha, gamma, 100_000, np.random.default_rng(7))
    assert mc == pytest.approx(th.expected_tokens(alpha, gamma), rel=0.01)


# ---- prefill hiding --------------------------------------------------------------------------------------------
def test_free_draft_tokens():
    assert th.free_draft_tokens(315.5, 91.7, 10.0) == 22  # floor(223.8 / 10)
    assert th.free_draft_tokens(50.0, 90.0, 10.0) == 0  # drafter slower than the target's prefill
    assert th.free_draft_tokens(100.0, 40.0, 20.0) == 3


def test_seed_formula_with_quoted_constants():
    # T = 316 + 70 + (29 - a*20.9)*14.0, S = 736/T: hand values
    assert th.seed_projection(1.0) == pytest.approx(736 / (386 + 8.1 * 14.0))
    assert th.seed_projection(0.21) == pytest.approx(736 / (386 + (29 - 0.21 * 20.9) * 14.0))
    # with the quoted one-decimal constant the 30% row lands just above the rounding boundary
    assert th.seed_projection(0.30) == pytest.approx(1.04513, abs=1e-5)


def test_seed_table_reproduced_to_two_decimals():
    lo, hi = th.seed_drafted_interval()
    assert 20.7 < lo <= hi < 20.9
    drafted = th.seed_drafted_estimate()
    assert 20.85 <= drafted <= hi
    for a, published in th.SEED_TABLE_PUBLISHED.items():
        assert round(th.seed_projection(a, drafted=drafted), 2) == published, a
    # outside the interval at least one row differs: the check can fail
    assert any(round(th.seed_projection(a, drafted=20.5), 2) != v for a, v in th.SEED_TABLE_PUBLISHED.items())


def test_per_token_alpha_from_rate_roundtrip():
    for alpha in (0.3, 0.7, 0.9):
        k = 21
        rate = alpha * (1 - alpha**k) / (1 - alpha) / k
        assert th.per_token_alpha_from_rate(rate, k) == pytest.approx(alpha, abs=1e-9)
    assert th.per_token_alpha_from_rate(1.0, 10) == pytest.approx(1.0)


# ---- end-to-end model ------------------------------------------------------------------------------------------
def test_decode_table_hand_values():
    # d_v = 2, d_e = 1, verify(g) = 2 + g; gamma 1, alpha 0.5
    t = th.decode_phase_table(2, 0.5, 1, lambda g: 2.0 if g == 0 else g * 1.0 + 2.0 + g)
    assert t[1] == pytest.approx(2.0)  # last token: no draft, one plain step
    assert t[2] == pytest.approx(4.0 + 0.5 * 2.0 + 0.5 * 0.0)


def test_e2e_limits():
    n = 30
    base = th.baseline_ms(th.RTX4090, n)
    assert base == pytest.approx(315.5 + 29 * 14.6)
    # no window, no drafting: exactly the baseline
    assert th.e2e_time(0.7, th.RTX4090, n, gamma=0, window=False).sd_ms == pytest.approx(base)
    # alpha = 0: draft 1 always wrong, the window is dropped without a verify
    assert th.e2e_time(0.0, th.RTX4090, n, gamma=0).speedup == pytest.approx(1.0)
    # alpha = 1: all 22 window drafts verified in one forward (70 ms), then 7 plain steps
    r = th.e2e_time(1.0, th.RTX4090, n, gamma=0)
    assert r.window_drafts == 22
    assert r.sd_ms == pytest.approx(315.5 + 70.0 + 7 * 14.6)


def test_e2e_one_token_answer_has_nothing_to_draft():
    r = th.e2e_time(0.9, th.RTX4090, 1, gamma=4)
    assert r.sd_ms == pytest.approx(th.RTX4090.P_v) and r.window_drafts == 0


@pytest.mark.parametrize(
    "alpha,gamma,window,rtt",
    [(0.5, 0, True, 0.0), (0.8, 3, True, 0.0), (0.9, 6, False, 0.0), (0.7, 2, True, 20.0), (1.0, 5, True, 0.0)],
)
def test_e2e_matches_monte_carlo(alpha, gamma, window, rtt):
    exact = th.e2e_time(alpha, TOY, 25, gamma=gamma, window=window, rtt_ms=rtt).sd_ms
    mc = th.simulate_e2e(alpha, TOY, 25, gamma, 100_000, np.random.default_rng(3), window=window, rtt_ms=rtt)
    assert mc == pytest.approx(exact, rel=0.01)


def test_best_schedule_never_loses_to_plain_decoding():
    for a in (0.0, 0.3, 0.6, 0.9):
        best = th.best_e2e(a, th.RTX4090, 30)
        assert best.speedup >= 1.0 - 1e-12
    assert th.best_e2e(0.0, th.RTX4090, 30).speedup == pytest.approx(1.0)
    assert th.best_e2e(1.0, th.RTX4090, 30).speedup > th.e2e_time(1.0, th.RTX4090, 30).speedup


def test_edge_cloud_speedup_falls_with_round_trip():
    s = [th.edge_cloud(0.9, th.RTX4090, 30, rtt)[1] for rtt in (0.0, 10.0, 40.0, 160.0)]
    assert all(x >= y - 1e-9 for x, y in zip(s, s[1:]))
    assert s[0] == pytest.approx(th.best_e2e(0.9, th.RTX4090, 30).speedup)


def test_decision_grid_limits():
    shares = np.array([0.05, 0.6])
    alphas = np.array([0.0, 0.9])
    g = th.decision_grid(shares, alphas, gamma_max=8)
    np.testing.assert_allclose(g["cross"][:, 0], 1.0)  # alpha 0: nobody gains
    np.testing.assert_allclose(g["same"][:, 0], 1.0)
    assert g["same"][0, 1] > g["cross"][0, 1]  # short prefill, good drafts: the cheap same-modality head wins
    assert g["cross"][1, 1] > g["cross"][0, 1]  # a longer prefill hides more drafts


def test_two_phase_estimate_from_prefixes_matches_the_window_model():
    # no window draft accepted anywhere: the head alone after the prefill
    none = th.two_phase_estimate([0] * 7, 4, 0.6, th.RTX4090, 30)
    assert none.sd_ms == pytest.approx(th.best_e2e(0.6, th.RTX4090, 30, gamma_max=16, window=False).sd_ms)
    # prefixes in exactly the proportions of a per-token acceptance of 0.5 over a window of 4 (1/2, 1/4, 1/8, 1/16,
    # 1/16 for 0..4): the same expected time as e2e_time's window model with alpha = 0.5 and the best gamma
    prefixes = [0] * 8 + [1] * 4 + [2] * 2 + [3] + [4]
    est = th.two_phase_estimate(prefixes, 4, 0.5, th.RTX4090, 30)
    model = min((th.e2e_time(0.5, th.RTX4090, 30, gamma=g, window_cap=4) for g in range(17)), key=lambda r: r.sd_ms)
    assert est.sd_ms == pytest.approx(model.sd_ms) and est.gamma == model.gamma and est.window_drafts == 4
