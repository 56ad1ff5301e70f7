"""The benchmark stage's library (sdlib.benchmark): the stratified sample, the three numbers against hand-computed
cases (ratio of totals and mean of ratios, the theory's prediction, the 4090 re-timing of recorded calls), the
bootstrap interval, and a small run on a random pair: every config's output checked against the baseline, the
per-sample record's fields."""
import math

import numpy as np
import pytest
import torch

from engine_fixtures import SIZES, random_pair, requests
from sdlib import benchmark as bm, theory
from sdlib.align.heads import TargetHead
from sdlib.decoding.drafters import NoDrafter, PromptLookupDrafter, TargetHeadDrafter, TwoPhaseDrafter


def test_stratified_sample_takes_equal_shares_per_type_in_order_and_is_seeded():
    records = [{"id": i, "type": i % 4 if i < 80 else 0} for i in range(100)]  # type 0 has 40, others 20
    pick = bm.stratified_sample(records, 20, 3, lambda r: r["type"])
    assert len(pick) == 20 and [r["id"] for r in pick] == sorted(r["id"] for r in pick)
    assert sorted(np.bincount([r["type"] for r in pick]).tolist()) == [5, 5, 5, 5]
    assert pick == bm.stratified_sample(records, 20, 3, lambda r: r["type"])
    assert pick != bm.stratified_sample(records, 20, 4, lambda r: r["type"])
    assert bm.stratified_sample(records, None, 0, lambda r: r["type"]) == records
    odd = bm.stratified_sample(records, 22, 0, lambda r: r["type"])  # remainder to the first types
    assert np.bincount([r["type"] for r in odd]).tolist() == [6, 6, 5, 5]


def test_bootstrap_interval_of_a_constant_ratio_is_that_ratio():
    base = np.arange(1.0, 11.0)
    assert bm.bootstrap_ratio(base, base / 2) == pytest.approx((2.0, 2.0))
    lo, hi = bm.bootstrap_ratio(np.ones(50), np.r_[np.full(25, 0.5), np.full(25, 1.0)])
    assert lo < 1 / 0.75 < hi


def test_predicted_time_by_hand():
    costs = theory.Costs(P_v=10.0, d_v=1.0, P_e=0.0, d_e=0.5, verify_slope=0.25)
    # alpha 1, k 3: 8 tokens after the first take 2 rounds of 3 drafts (4 tokens each): 2 * (3 * 0.5 + 1 + 0.75)
    rec = {"n_tokens": 9, "placement": "two_devices", "drafter_start_ms": 4.0}
    assert bm.predicted_ms(rec, costs, 1.0, 3) == pytest.approx(10 + 2 * 3.25)
    # alpha 0: every round yields one token; a round never drafts past the answer's end (k = 3 while 4 or more
    # tokens remain, then 2, 1, 0: a plain decode step)
    assert bm.predicted_ms(rec, costs, 0.0, 3) == pytest.approx(10 + 5 * 3.25 + 2.5 + 1.75 + 1.0)
    # shared device: the drafter's start runs in the target's thread; 4 window tokens used: one verify of k drafts,
    # then 4 tokens in one round
    rec = {"n_tokens": 9, "placement": "shared_device", "drafter_start_ms": 4.0, "window_tokens_used": 4}
    assert bm.predicted_ms(rec, costs, 1.0, 3) == pytest.approx(14 + 1.75 + 3.25)
    # the original's protocol: overlap modelled, plain decoding after the window
    rec = {"n_tokens": 9, "placement": "modelled", "drafter_start_ms": 12.0, "window_tokens_used": 3}
    assert bm.predicted_ms(rec, costs, 1.0, 20, decode_k=0) == pytest.approx(12 + (1 + 20 * 0.25) + 5 * 1.0)


def test_4090_projection_re_times_the_recorded_calls():
    c = theory.RTX4090
    rec = {"placement": "two_devices",
           "calls": [("target", "prefill", 100, 0.0, 50.0), ("target", "verify", 4, 52.0, 3.0),
                     ("target", "decode", 1, 60.0, 2.0)],
           "events": [(10.0, "started", 0), (20.0, "feed", 1), (56.0, "feed", 1), (57.0, "feed", 2),
                      (58.0, "draft", 7), (53.0, "head_feed", 1)]}
    costs = {"started": "start", "feed": "model_forward", "head_feed": "head_forward"}
    want_target = c.P_v + float(c.verify_ms(3)) + c.d_v
    # concurrent: events inside a target forward are hidden (start, first feed, the head's); two feeds outside
    assert bm.projected_4090_ms(rec, costs) == pytest.approx(want_target + 2 * bm.DRAFTER_4090_MS["model_forward"])
    shared = dict(rec, placement="shared_device")
    assert bm.projected_4090_ms(shared, costs) == pytest.approx(
        want_target + bm.DRAFTER_4090_MS["start"] + 3 * bm.DRAFTER_4090_MS["model_forward"]
        + bm.DRAFTER_4090_MS["head_forward"])
    assert bm.projected_4090_ms({"calls": []}, costs) is None
    # the original's timing model: the drafter's start and window drafts (before the prefill began) overlap the
    # prefill, up to its length; later drafter forwards add
    modelled = {"placement": "modelled", "calls": [("target", "prefill", 100, 30.0, 50.0)],
                "events": [(10.0, "started", 0), (20.0, "feed", 1), (25.0, "feed", 1), (90.0, "feed", 1)]}
    assert bm.projected_4090_ms(modelled, costs) == pytest.approx(
        c.P_v + bm.DRAFTER_4090_MS["start"] + 3 * bm.DRAFTER_4090_MS["model_forward"]
        - min(c.P_v, bm.DRAFTER_4090_MS["start"] + 2 * bm.DRAFTER_4090_MS["model_forward"]))


def _records():
    recs = []
    for i, (t_ar, t_x, same) in enumerate([(100.0, 50.0, True), (100.0, 100.0, True), (200.0, 50.0, False)]):
        calls = [("target", "prefill", 10, 0.0, 40.0)] + [("target", "decode", 1, 40.0 + j, 10.0) for j in range(6)]
        recs.append({"config": "target_ar", "prompt_id": str(i), "total_ms": t_ar, "prefill_ms": 40.0,
                     "decode_ms": t_ar - 40.0, "n_tokens": 7, "calls": calls, "events": [],
                     "placement": "target_only", "identical_to_baseline": True})
        recs.append({"config": "x", "prompt_id": str(i), "total_ms": t_x, "measured_total_ms": t_x, "prefill_ms": 40.0,
                     "decode_ms": t_x - 40.0, "drafter_start_ms": 0.0, "n_tokens": 7, "k": 3,
                     "calls": [("target", "prefill", 10, 0.0, 40.0), ("target", "verify", 4, 41.0, 5.0),
                               ("target", "verify", 4, 47.0, 5.0)],
                     "events": [], "placement": "shared_device", "identical_to_baseline": same,
                     "round_accepted": [3, 1], "round_offered": [3, 3], "drafted": 6,
                     "drafts_ready_at_prefill_end": 0, "window_tokens_used": 0})
    return recs


def test_summary_numbers_by_hand():
    configs = [bm.Config("target_ar", kind="ar"), bm.Config("x", costs_4090={})]
    s = bm.summarize(_records(), configs)
    x = s["x"]
    assert x["speedup_ratio_of_means"] == pytest.approx(400 / 200)
    assert x["speedup_mean_of_ratios"] == pytest.approx((2 + 1 + 4) / 3)
    assert x["mismatches"] == 1 and x["n_samples"] == 3 and x["placement"] == "shared_device"
    assert x["mean_accept_len"] == pytest.approx(1 + 4 / 2) and x["acceptance_rate"] == pytest.approx(4 / 6)
    assert x["r_i"] == [1.0, 0.5, 0.5] and x["a_i"] == [1.0, 0.5, 1.0] and x["histogram"] == [0, 3, 0, 3]
    assert x["slower_share"] == 0.0
    c4 = theory.RTX4090
    assert x["speedup_4090_projected"] == pytest.approx((c4.P_v + 6 * c4.d_v) / (c4.P_v + 2 * float(c4.verify_ms(3))))
    assert math.isfinite(x["speedup_predicted"]) and x["measured_costs"]["d_v"] == 10.0
    assert s["target_ar"]["speedup_ratio_of_means"] == 1.0
    for key in ("speedup_ratio_of_means", "speedup_mean_of_ratios", "speedup_predicted", "speedup_4090_projected",
                "mean_accept_len", "acceptance_rate", "mismatches", "n_samples", "placement"):
        assert key in x and key in s["target_ar"]


def test_a_small_run_checks_every_output_against_the_baseline():
    pair = random_pair()
    drafter, target = pair
    torch.manual_seed(8)
    head = TargetHead(SIZES.target_hidden, max_len=8)
    reqs = [bm.Request(str(i), i % 2, t, d, 0.1 * i) for i, (t, d) in enumerate(requests(pair, 3, seed=21))]
    v = target.lm_head.out_features
    configs = [bm.Config("target_ar", kind="ar"),
               bm.Config("head", make=lambda: TargetHeadDrafter(head, target.lm_head, target.embed_tokens), inputs=None,
                         costs_4090={"feed": "head_forward"}),
               bm.Config("lookup", make=lambda: PromptLookupDrafter(v), inputs="target", k=lambda a: 2 if a < 0.15 else 4),
               bm.Config("window_only", make=lambda: TwoPhaseDrafter(PromptLookupDrafter(v), NoDrafter(v)),
                         inputs="target", k=6, window=6, modelled=True, decode_k=0)]
    records = bm.run_benchmark(configs, target, reqs, 10)
    assert len(records) == 12
    for r in records:
        assert r["identical_to_baseline"] is True, r["config"]
        assert {"prefill_ms", "decode_ms", "total_ms", "calls", "text", "placement", "n_tokens"} <= set(r)
        if r["config"] != "target_ar":
            assert {"drafts_ready_at_prefill_end", "drafted", "accepted", "cumulative", "conditional", "tau",
                    "round_accepted", "events"} <= set(r)
    assert [r["k"] for r in records if r["config"] == "lookup"] == [2, 2, 4]
    assert {r["placement"] for r in records if r["config"] == "window_only"} == {"modelled"}
    s = bm.summarize(records, configs)
    assert all(s[c.name]["mismatches"] == 0 for c in configs)
    with pytest.raises(ValueError, match="first config must be the target alone"):
        bm.run_benchmark(configs[1:], target, reqs, 10)
