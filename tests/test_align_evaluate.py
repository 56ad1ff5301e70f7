"""Offline adapter metrics (sdlib.align.evaluate) on small ragged batches whose numbers are worked out by hand in the
comments: vectors are parallel, orthogonal or built from 0.6/0.8 components so cosines are exact, and a 5-token
LM head on 2-d states makes every logit readable."""
import math

import pytest
import torch

from sdlib.align.evaluate import (accept_at, consecutive, consecutive_stats, cosine, cosine_stats, match_given_cos,
                                  padded, pearson, per_position, prefix_acceptance, shift_pairs, split_by, summarize,
                                  token_topk)

T, F = True, False


def b(*xs):
    return torch.tensor(xs, dtype=torch.bool)


def f64(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# an LM head on 2-d states: logits of h = (x, y) are [x, y, -x, -y, 0.6x + 0.8y]
W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.6, 0.8]])


# -- layout ----------------------------------------------------------------------------------------------------------
def test_shift_pairs_drops_last_pred_rows_and_first_target_rows_per_sample():
    offsets = torch.tensor([0, 3, 4, 6])  # lengths 3, 1, 2
    pred = torch.arange(6.0)[:, None] + 100  # row r holds 100 + r
    target = torch.arange(6.0)[:, None] + 200
    tokens = torch.arange(10, 16)
    p, t, off, tok = shift_pairs(pred, target, offsets, 1, tokens)
    # sample 0 pairs pred rows 0, 1 with target rows 1, 2; sample 1 (length 1) becomes empty; sample 2: 4 with 5
    assert p[:, 0].tolist() == [100, 101, 104]
    assert t[:, 0].tolist() == [201, 202, 205]
    assert off.tolist() == [0, 2, 2, 3]
    assert tok.tolist() == [11, 12, 15]
    p, t, off, tok = shift_pairs(pred, target, offsets, 2)
    assert p[:, 0].tolist() == [100] and t[:, 0].tolist() == [202] and off.tolist() == [0, 1, 1, 1] and tok is None
    p, t, off, _ = shift_pairs(pred, target, offsets, 0)
    assert torch.equal(p, pred) and torch.equal(t, target) and off.tolist() == [0, 3, 4, 6]
    with pytest.raises(ValueError, match="shift"):
        shift_pairs(pred, target, offsets, -1)


def test_offsets_are_checked():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"offsets\[-1\] == the number of rows 4, got 3"):
        shift_pairs(x, x, [0, 1, 3], 1)
    with pytest.raises(ValueError, match="non-decreasing"):
        shift_pairs(x, x, [0, 3, 2, 4], 1)
    with pytest.raises(ValueError, match=r"offsets\[0\] == 0"):
        padded(torch.zeros(4), [1, 4])


def test_padded():
    x, mask = padded(f64(1, 2, 3, 4, 5, 6), torch.tensor([0, 3, 4, 6]), fill=-1)
    assert x.tolist() == [[1, 2, 3], [4, -1, -1], [5, 6, -1]]
    assert mask.tolist() == [[T, T, T], [T, F, F], [T, T, F]]
    x, mask = padded(torch.tensor([7, 8, 9]), [0, 2, 2, 3], fill=0)  # an empty sample is an all-padding row
    assert x.tolist() == [[7, 8], [0, 0], [9, 0]] and mask.tolist() == [[T, T], [F, F], [T, F]]


# -- cosine ----------------------------------------------------------------------------------------------------------
def test_cosine_of_parallel_orthogonal_and_0608_rows():
    pred = torch.tensor([[1, 0], [1, 0], [0.6, 0.8], [0.8, 0.6], [0.6, 0.8], [1, 1], [0, 0]], dtype=torch.float64)
    target = torch.tensor([[2, 0], [0, 3], [1, 0], [1, 0], [0.8, 0.6], [-2, -2], [1, 0]], dtype=torch.float64)
    c = cosine(pred, target)
    assert c.tolist() == pytest.approx([1.0, 0.0, 0.6, 0.8, 0.96, -1.0, 0.0])  # zero row: 0, not NaN
    c16 = cosine(pred.half(), target.half())
    assert c16.dtype == torch.float32 and c16.tolist() == pytest.approx([1.0, 0.0, 0.6, 0.8, 0.96, -1.0, 0.0],
                                                                        abs=1e-3)
    with pytest.raises(ValueError, match="same"):
        cosine(pred, target[:3])


def test_cosine_stats_use_population_std_and_the_middle_mean_median():
    s = cosine_stats(f64(1.0, 0.0, 0.6, 0.96))
    # mean 2.56 / 4 = 0.64; deviations .36 -.64 -.04 .32, squares sum .6432, / 4 = .1608
    assert s["mean"] == pytest.approx(0.64) and s["std"] == pytest.approx(math.sqrt(0.1608))
    assert s["min"] == 0.0 and s["max"] == 1.0 and s["median"] == pytest.approx(0.78)  # (0.6 + 0.96) / 2
    assert cosine_stats(f64(3, 1, 2))["median"] == 2.0
    assert all(math.isnan(v) for v in cosine_stats(f64()).values())


def test_accept_at_is_strictly_greater():
    c = f64(0.80, 0.85, 0.90, 0.95, 0.96, 0.50)
    assert accept_at(c) == pytest.approx({0.80: 4 / 6, 0.85: 3 / 6, 0.90: 2 / 6, 0.95: 1 / 6})
    assert accept_at(c, taus=(0.0, 0.99)) == {0.0: 1.0, 0.99: 0.0}
    assert math.isnan(accept_at(f64(), (0.9,))[0.9])


# -- accepted prefixes -----------------------------------------------------------------------------------------------
OK = b(T, T, F, T, F, T, T, T, T)  # samples [T T F T], [F T], [T T T], []
OK_OFFSETS = torch.tensor([0, 4, 6, 9, 9])


def test_consecutive_counts_the_all_true_prefix():
    assert consecutive(OK, OK_OFFSETS).tolist() == [2, 0, 3, 0]
    assert consecutive(OK, OK_OFFSETS, limit=1).tolist() == [1, 0, 1, 0]
    assert consecutive(OK, OK_OFFSETS, limit=2).tolist() == [2, 0, 2, 0]
    assert consecutive(OK, OK_OFFSETS, limit=0).tolist() == [0, 0, 0, 0]
    assert consecutive(OK, OK_OFFSETS).dtype == torch.int64
    with pytest.raises(ValueError, match="ok: expected a bool"):
        consecutive(OK.float(), OK_OFFSETS)


def test_consecutive_stats():
    s = consecutive_stats(consecutive(OK, OK_OFFSETS))  # [2, 0, 3, 0]
    # mean 1.25; deviations .75 -1.25 1.75 -1.25, squares sum 6.75, / 4 = 1.6875
    assert s == pytest.approx({"mean": 1.25, "std": math.sqrt(1.6875), "median": 1.0, "max": 3.0, "min": 0.0})


def test_prefix_acceptance_in_a_window():
    # positions [1, 3): sample 0 sees [T F] -> 1; sample 1 has only position 1 [T] -> 1; sample 2 [T T] -> 2
    assert prefix_acceptance(OK, OK_OFFSETS, start=1, length=2).tolist() == [1, 1, 2, 0]
    # positions [3, 8): only sample 0 reaches position 3, where it is True
    assert prefix_acceptance(OK, OK_OFFSETS, start=3, length=5).tolist() == [1, 0, 0, 0]
    # positions 2 onwards: sample 0 [F T] -> 0; sample 2 [T] -> 1
    assert prefix_acceptance(OK, OK_OFFSETS, start=2).tolist() == [0, 0, 1, 0]
    assert prefix_acceptance(OK, OK_OFFSETS, 0, 3).tolist() == consecutive(OK, OK_OFFSETS, limit=3).tolist()


def _prefix_loop(ok, lengths, start, length):
    out, lo = [], 0
    for n in lengths:
        window = ok[lo + start: lo + (n if length is None else min(n, start + length))] if start < n else []
        k = 0
        for v in window:
            if not v:
                break
            k += 1
        out.append(k)
        lo += n
    return out


def test_consecutive_and_windows_match_a_python_loop_on_random_data():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        lengths = torch.randint(0, 12, (7,), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        ok = torch.rand(int(lengths.sum()), generator=g) < 0.8
        okl, ls = ok.tolist(), lengths.tolist()
        limit = [None, 0, 1, 3, 20][trial % 5]
        assert consecutive(ok, offsets, limit).tolist() == _prefix_loop(okl, ls, 0, limit)
        start = trial % 6
        assert prefix_acceptance(ok, offsets, start, limit).tolist() == _prefix_loop(okl, ls, start, limit)


# -- tokens ----------------------------------------------------------------------------------------------------------
def test_token_topk_ranks_by_logit():
    pred = torch.tensor([[2.0, 1.5]] * 4)  # logits [2, 1.5, -2, -1.5, 2.4]: order 4, 0, 1, 3, 2
    tokens = torch.tensor([4, 0, 3, 2])
    hit = token_topk(pred, W, tokens, ks=(1, 2, 3, 4, 5))
    assert hit[1].tolist() == [T, F, F, F]
    assert hit[2].tolist() == [T, T, F, F]
    assert hit[3].tolist() == [T, T, F, F]
    assert hit[4].tolist() == [T, T, T, F]
    assert hit[5].tolist() == [T, T, T, T]


def test_token_topk_counts_a_token_tied_with_the_kth_logit():
    # pred (1, 0): logits [1, 0, -1, 0, 0.6]; tokens 1 and 3 tie for third place (0 and 0)
    pred = torch.tensor([[1.0, 0.0]] * 3)
    hit = token_topk(pred, W, torch.tensor([1, 3, 2]), ks=(2, 3, 4))
    assert hit[2].tolist() == [F, F, F]
    assert hit[3].tolist() == [T, T, F]  # both tied tokens count, though only one third place exists
    assert hit[4].tolist() == [T, T, F]
    # a tie for first: W2 gives logits [1, 0, 1, ...] on (1, 0); both tied tokens are "top-1", argmax picks token 0
    w2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])
    hit = token_topk(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), w2, torch.tensor([0, 2]), ks=(1,))
    assert hit[1].tolist() == [T, T]
    assert (torch.tensor([[1.0, 0.0]]) @ w2.T).argmax(-1).item() == 0


def test_token_topk_adds_the_bias():
    # pred (2, 1.5): logits [2, 1.5, -2, -1.5, 2.4] + bias [0, 0, 0, 0, -1] = [2, 1.5, -2, -1.5, 1.4]: token 0 is
    # now the largest and token 4 ranks third
    bias = torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0])
    hit = token_topk(torch.tensor([[2.0, 1.5]] * 2), W, torch.tensor([0, 4]), ks=(1, 2, 3), bias=bias)
    assert hit[1].tolist() == [T, F] and hit[2].tolist() == [T, F] and hit[3].tolist() == [T, T]


def test_top1_equals_argmax_without_ties_and_chunking_does_not_matter():
    g = torch.Generator().manual_seed(1)
    pred, w = torch.randn(37, 3, generator=g), torch.randn(6, 3, generator=g)
    tokens = torch.randint(0, 6, (37,), generator=g)
    full = token_topk(pred, w, tokens, ks=(1, 2, 6), chunk=37)
    assert full[1].tolist() == ((pred @ w.T).argmax(-1) == tokens).tolist()
    assert 0 < int(full[1].sum()) < 37  # the case is not trivially all-true or all-false
    top2 = (pred @ w.T).topk(2, dim=-1).indices
    assert full[2].tolist() == (top2 == tokens[:, None]).any(-1).tolist()
    assert bool(full[6].all())
    for chunk in (1, 5, 4096):
        part = token_topk(pred, w, tokens, ks=(1, 2, 6), chunk=chunk)
        assert all(torch.equal(part[k], full[k]) for k in (1, 2, 6))


def test_token_topk_rejects_bad_input():
    with pytest.raises(ValueError, match=r"tokens: expected ids in \[0, 5\)"):
        token_topk(torch.ones(2, 2), W, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="lm_head_weight"):
        token_topk(torch.ones(2, 3), W, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"tokens: expected \[2\]"):
        token_topk(torch.ones(2, 2), W, torch.tensor([0, 1, 2]))


def test_match_given_cos_with_an_empty_bin():
    c = f64(0.95, 0.85, 0.99, 0.5)
    match = b(T, F, T, T)
    out = match_given_cos(c, match, taus=(0.80, 0.90, 0.98, 0.99))
    assert out[0.80] == {"p_match": pytest.approx(2 / 3), "count": 3}  # rows 0, 1, 2
    assert out[0.90] == {"p_match": 1.0, "count": 2}  # rows 0, 2
    assert out[0.98] == {"p_match": 1.0, "count": 1}
    assert math.isnan(out[0.99]["p_match"]) and out[0.99]["count"] == 0


def test_pearson_by_hand():
    # x - mean: -1.5 -.5 .5 1.5; y - mean: -.5 -.5 .5 .5; sum xy = 2, sxx = 5, syy = 1 -> 2 / sqrt(5)
    assert pearson(f64(1, 2, 3, 4), b(F, F, T, T)) == pytest.approx(2 / math.sqrt(5))
    assert pearson(f64(4, 3, 2, 1), b(F, F, T, T)) == pytest.approx(-2 / math.sqrt(5))
    assert math.isnan(pearson(f64(1, 2, 3), b(T, T, T)))
    assert math.isnan(pearson(f64(0.5, 0.5, 0.5), b(T, F, T)))


# -- breakdowns ------------------------------------------------------------------------------------------------------
def test_per_position_with_ragged_samples():
    offsets = torch.tensor([0, 3, 4, 6])  # lengths 3, 1, 2
    cos = f64(0.9, 0.8, 0.7, 0.5, 0.3, 0.1)
    ok = b(T, F, T, T, F, F)
    df = per_position({"cos": cos, "accept_0.90": ok}, offsets)
    assert df.columns.tolist() == ["position", "n", "cos", "accept_0.90"]
    assert df["position"].tolist() == [0, 1, 2] and df["n"].tolist() == [3, 2, 1]
    # position 0: rows 0, 3, 4; position 1: rows 1, 5; position 2: row 2
    assert df["cos"].tolist() == pytest.approx([1.7 / 3, 0.45, 0.7])
    assert df["accept_0.90"].tolist() == pytest.approx([2 / 3, 0.0, 1.0])
    short = per_position({"cos": cos}, offsets, max_positions=2)
    assert short["n"].tolist() == [3, 2] and short["cos"].tolist() == pytest.approx([1.7 / 3, 0.45])
    with pytest.raises(ValueError, match=r"cos: expected \[6\]"):
        per_position({"cos": cos[:5]}, offsets)


def test_split_by_groups():
    top1 = b(T, F, T, T, F, F)
    cos = f64(1.0, 0.5, 0.0, 1.0, 0.5, 0.0)
    out = split_by({"token_top1": top1, "cos": cos}, b(T, T, F, F, F, T))
    # fact rows 0, 1, 5; template rows 2, 3, 4
    assert out == pytest.approx({"rows_fact": 3, "token_top1_fact": 1 / 3, "cos_fact": 0.5,
                                 "rows_template": 3, "token_top1_template": 2 / 3, "cos_template": 0.5})
    out = split_by({"token_top1": top1}, torch.ones(6, dtype=torch.bool), names=("a", "b"))
    assert out["rows_a"] == 6 and out["token_top1_a"] == pytest.approx(0.5)
    assert out["rows_b"] == 0 and math.isnan(out["token_top1_b"])


# -- summarize -------------------------------------------------------------------------------------------------------
def test_summarize_pred_equal_to_target_is_perfect():
    g = torch.Generator().manual_seed(2)
    lengths = [3, 1, 5, 2]
    offsets = torch.tensor([0, 3, 4, 9, 11])
    target = torch.randn(11, 4, generator=g)
    w = torch.randn(7, 4, generator=g)
    tokens = (target @ w.T).argmax(-1)
    s = summarize(target.clone(), target, offsets, w, tokens)
    assert s["rows"] == 11 and s["samples"] == 4 and s["length_mean"] == pytest.approx(11 / 4)
    assert s["cos_mean"] == pytest.approx(1.0) and s["cos_min"] == pytest.approx(1.0)
    for tau in ("0.80", "0.85", "0.90", "0.95"):
        assert s[f"accept_at_{tau}"] == 1.0
        assert s[f"consecutive_at_{tau}"] == pytest.approx(sum(lengths) / 4)
    assert s["consecutive_at_0.90_max"] == 5 and s["consecutive_at_0.90_min"] == 1
    assert s["token_top1"] == 1.0 and s["token_top5"] == 1.0 and s["target_token_top1"] == 1.0
    assert s["token_consecutive"] == pytest.approx(11 / 4) and s["token_consecutive_median"] == 2.5
    assert s["p_match_given_cos"]["0.90"] == {"p_match": 1.0, "count": 11}
    assert math.isnan(s["pearson_r"])  # every row matches: no correlation to speak of


# targets [(1,0) (0,1) (.6,.8)] [(0,1)]; their greedy tokens under W: 0, 1, 4, 1
TARGET = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0]])
TOKENS = torch.tensor([0, 1, 4, 1])
PRED = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 2.0]])
OFFSETS = torch.tensor([0, 3, 4])
FACT = b(T, F, F, T)


def test_summarize_by_hand_same_position():
    s = summarize(PRED, TARGET, OFFSETS, W, TOKENS, fact_mask=FACT)
    # cos [1, .6, 1, 1]: mean .9, deviations .1 -.3 .1 .1 -> variance .03
    assert s["rows"] == 4 and s["samples"] == 2
    assert s["cos_mean"] == pytest.approx(0.9) and s["cos_std"] == pytest.approx(math.sqrt(0.03), rel=1e-5)
    assert s["cos_median"] == pytest.approx(1.0) and s["cos_min"] == pytest.approx(0.6)
    assert s["accept_at_0.80"] == 0.75 and s["accept_at_0.95"] == 0.75
    assert s["consecutive_at_0.90"] == 1.0 and s["consecutive_at_0.90_std"] == 0.0  # [T F T] -> 1, [T] -> 1
    # row 1: logits of (.8, .6) are [.8, .6, -.8, -.6, .96]; token 1 ranks third
    assert s["token_top1"] == 0.75 and s["token_top5"] == 1.0 and s["token_top10"] == 1.0
    assert s["token_consecutive"] == 1.0 and s["target_token_top1"] == 1.0
    assert s["p_match_given_cos"]["0.80"] == {"p_match": 1.0, "count": 3}
    assert s["pearson_r"] == pytest.approx(1.0, abs=1e-6)  # cos = 0.6 + 0.4 * match
    assert s["rows_fact"] == 2 and s["token_top1_fact"] == 1.0  # rows 0, 3
    assert s["rows_template"] == 2 and s["token_top1_template"] == 0.5  # rows 1, 2


def test_summarize_by_hand_shifted():
    s = summarize(PRED, TARGET, OFFSETS, W, TOKENS, shift=1, fact_mask=FACT)
    # pairs: pred (1,0) vs target (0,1), token 1; pred (.8,.6) vs target (.6,.8), token 4; sample 1 is empty
    assert s["rows"] == 2 and s["samples"] == 2 and s["length_mean"] == 1.0
    assert s["cos_mean"] == pytest.approx(0.48) and s["cos_max"] == pytest.approx(0.96)
    assert s["accept_at_0.90"] == 0.5 and s["accept_at_0.95"] == 0.5
    assert s["consecutive_at_0.90"] == 0.0  # [F T] -> 0, [] -> 0
    # pred (1,0): logits [1, 0, -1, 0, .6], token 1 ranks third (tied); pred (.8,.6): token 4 is the argmax
    assert s["token_top1"] == 0.5 and s["token_consecutive"] == 0.0 and s["target_token_top1"] == 1.0
    assert s["p_match_given_cos"]["0.90"] == {"p_match": 1.0, "count": 1}
    # the fact mask moves with the target rows: rows 1, 2 are both template
    assert s["rows_fact"] == 0 and math.isnan(s["token_top1_fact"])
    assert s["rows_template"] == 2 and s["token_top1_template"] == 0.5


def test_summarize_without_a_head_and_input_checks():
    s = summarize(PRED, TARGET, OFFSETS)
    assert "token_top1" not in s and s["cos_mean"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="both or neither"):
        summarize(PRED, TARGET, OFFSETS, W)
    with pytest.raises(ValueError, match=r"fact_mask: expected \[4\]"):
        summarize(PRED, TARGET, OFFSETS, W, TOKENS, fact_mask=FACT[:3])
