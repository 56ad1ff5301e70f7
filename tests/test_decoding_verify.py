"""The verification rules and the shared sampling processors (sdlib.decoding.verify / .processors).

Greedy verification is checked against a plain loop; speculative sampling statistically: at 2·10^5 trials the
distribution of what it emits must be within total-variation distance 0.01 of the target's own distribution, for one
round and for whole sequences generated over several rounds, with temperature, top-k and top-p, with the drafter's
sampling distribution and with deterministic drafts (no q). A deliberately wrong rule must fail the same check.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from sdlib.decoding.processors import Sampling, probabilities, process_logits, sample
from sdlib.decoding.verify import (leading_true, verify_greedy, verify_greedy_batch, verify_sampling,
                                   verify_sampling_batch)

TRIALS = 200_000
TV_LIMIT = 0.01
SETTINGS = [Sampling(temperature=1.0), Sampling(temperature=0.7, top_k=3), Sampling(temperature=1.3, top_p=0.8),
            Sampling(temperature=1.0, top_k=4, top_p=0.9)]


def tv(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Total-variation distance between empirical counts and a distribution."""
    return 0.5 * float((counts.double() / counts.sum() - probs.double()).abs().sum())


# ---- processors ------------------------------------------------------------------------------------------------
def test_processors_keep_what_transformers_generate_keeps():
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 3
    for s in SETTINGS:
        ref = TemperatureLogitsWarper(s.temperature)(None, logits.clone())
        if s.top_k:
            ref = TopKLogitsWarper(s.top_k)(None, ref)
        if s.top_p < 1:
            ref = TopPLogitsWarper(s.top_p)(None, ref)
        ours = process_logits(logits, s)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref)), s
        assert torch.allclose(torch.softmax(ours, -1), torch.softmax(ref, -1), atol=1e-6), s


def test_greedy_processing_is_one_hot_on_the_first_maximum():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, -1.0, 2.0, 5.0]])
    assert probabilities(logits, Sampling()).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = torch.isfinite(process_logits(probs.log(), Sampling(temperature=1.0, top_p=0.8)))
    assert kept.tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    kept = torch.isfinite(process_logits(probs.log(), Sampling(temperature=1.0, top_p=0.81)))
    assert kept.tolist() == [True, True, True, False]
    kept = torch.isfinite(process_logits(probs.log(), Sampling(temperature=1.0, top_p=0.1)))
    assert kept.tolist() == [True, False, False, False]  # at least one token


@pytest.mark.parametrize("kwargs", [{"temperature": -1.0}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_bad_sampling_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Sampling(**kwargs)


# ---- greedy ----------------------------------------------------------------------------------------------------
def _greedy_by_hand(draft: list[int], logits: torch.Tensor) -> list[int]:
    out = []
    for i, x in enumerate(draft):
        best = int(logits[i].argmax())
        if x != best:
            return out + [best]
        out.append(x)
    return out + [int(logits[len(draft)].argmax())]


def test_greedy_matches_a_plain_loop_on_random_rounds():
    g = torch.Generator().manual_seed(1)
    seen = set()
    for trial in range(400):
        k = trial % 6  # k = 0 (no drafts: the target's own token) up to 5
        logits = torch.randn(k + 1, 12, generator=g)
        best = logits.argmax(-1)
        wrong = torch.randint(0, 12, (k,), generator=g)
        use_best = torch.rand(k, generator=g) < 0.75
        draft = torch.where(use_best, best[:k], wrong)
        verdict = verify_greedy(draft, logits)
        assert verdict.tokens == _greedy_by_hand(draft.tolist(), logits)
        assert verdict.accepted == len(verdict.tokens) - 1 and verdict.offered == k
        seen.add((k, verdict.accepted))
    assert {(5, 0), (5, 5), (1, 0), (1, 1), (0, 0)} <= seen  # none, all, and k = 1 both ways


def test_greedy_all_accepted_emits_the_bonus_and_none_accepted_the_correction():
    logits = torch.tensor([[0.0, 9.0, 0.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]])  # argmax 1, 2, 0
    all_in = verify_greedy(torch.tensor([1, 2]), logits)
    assert all_in.tokens == [1, 2, 0] and all_in.all_accepted
    none_in = verify_greedy(torch.tensor([2, 2]), logits)
    assert none_in.tokens == [1] and none_in.accepted == 0 and not none_in.all_accepted


def test_batched_greedy_rows_are_independent():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(32, 5, 9, generator=g)
    draft = torch.where(torch.rand(32, 4, generator=g) < 0.8, logits.argmax(-1)[:, :4], torch.zeros(32, 4).long())
    accepted, nxt = verify_greedy_batch(draft, logits)
    for b in range(32):
        expect = _greedy_by_hand(draft[b].tolist(), logits[b])
        assert draft[b, :accepted[b]].tolist() + [int(nxt[b])] == expect


def test_leading_true_counts_up_to_the_first_false():
    mask = torch.tensor([[True, True, False, True], [False, True, True, True], [True] * 4])
    assert leading_true(mask).tolist() == [2, 0, 4]


@pytest.mark.parametrize("draft,rows,match", [
    (torch.tensor([[1, 2]]), torch.zeros(1, 2, 5), "k \\+ 1 rows"),
    (torch.tensor([[1, 7]]), torch.zeros(1, 3, 5), "outside the target's vocabulary"),
    (torch.tensor([1, 2]), torch.zeros(1, 3, 5), "expected drafts"),
])
def test_malformed_rounds_are_refused_with_the_expectation(draft, rows, match):
    with pytest.raises(ValueError, match=match):
        verify_greedy_batch(draft, rows)


# ---- speculative sampling: one round -----------------------------------------------------------------------------
def _random_rows(g, n, v, sampling, sharp=2.0):
    return probabilities(torch.randn(n, v, generator=g) * sharp, sampling)


def _one_round_first_token(p, q, k, trials, g, rule=verify_sampling_batch):
    """Counts of the first emitted token over ``trials`` rounds whose drafts are drawn from q (fixed rows)."""
    if q is None:  # deterministic drafts: the drafter's argmax of some other distribution
        draft = torch.randint(0, p.shape[-1], (k,), generator=g).expand(trials, k)
        qs = None
    else:
        draft = sample(q[None].expand(trials, k, -1), g)  # [trials, k]
        qs = q[None].expand(trials, k, -1)
    accepted, nxt = rule(draft, qs, p[None].expand(trials, k + 1, -1), g)
    first = torch.where(accepted > 0, draft[:, 0], nxt)
    return torch.bincount(first, minlength=p.shape[-1]), accepted


@pytest.mark.parametrize("sampling", SETTINGS, ids=str)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("with_q", [True, False], ids=["q", "one-hot"])
def test_one_round_emits_the_target_distribution(sampling, k, with_q):
    g = torch.Generator().manual_seed(3 + k)
    v = 8
    p = _random_rows(g, k + 1, v, sampling)
    q = _random_rows(g, k, v, sampling) if with_q else None
    counts, accepted = _one_round_first_token(p, q, k, TRIALS, g)
    assert tv(counts, p[0]) < TV_LIMIT
    # and acceptance of the first draft happens at the rate theory says: sum_x min(p, q) (or p(x) for one-hot q)
    if with_q:
        expected = float(torch.minimum(p[0], q[0]).sum())
        assert abs(float((accepted > 0).double().mean()) - expected) < 0.01


def test_a_wrong_rule_fails_the_same_check():
    """Power check: resampling from p instead of max(0, p - q) after a rejection is a classic bug; the check above
    must catch it on the same setup."""
    def wrong_rule(draft, q, p, g):
        accepted, _ = verify_sampling_batch(draft, q, p, g)
        rows = torch.arange(draft.shape[0])
        return accepted, torch.multinomial(p[rows, accepted], 1, generator=g).squeeze(1)

    g = torch.Generator().manual_seed(4)
    sampling = Sampling(temperature=1.0)
    p, q = _random_rows(g, 2, 8, sampling), _random_rows(g, 1, 8, sampling)
    counts, _ = _one_round_first_token(p, q, 1, TRIALS, g, rule=wrong_rule)
    assert tv(counts, p[0]) > 5 * TV_LIMIT


def test_identical_distributions_accept_everything():
    g = torch.Generator().manual_seed(5)
    p = _random_rows(g, 4, 10, Sampling(temperature=1.0))
    draft = sample(p[None, :3].expand(1000, 3, -1), g)
    accepted, _ = verify_sampling_batch(draft, p[None, :3].expand(1000, 3, -1), p[None].expand(1000, 4, -1), g)
    assert bool((accepted == 3).all())


def test_a_seeded_generator_makes_a_round_reproducible():
    g = torch.Generator().manual_seed(6)
    p, q = _random_rows(g, 5, 16, Sampling(temperature=1.0)), _random_rows(g, 4, 16, Sampling(temperature=1.0))
    draft = sample(q, g)
    first = verify_sampling(draft, q, p, torch.Generator().manual_seed(7))
    again = verify_sampling(draft, q, p, torch.Generator().manual_seed(7))
    assert first == again


def test_a_draft_q_cannot_have_produced_is_refused():
    p = torch.full((2, 4), 0.25)
    q = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    with pytest.raises(ValueError, match="probability 0"):
        verify_sampling(torch.tensor([2]), q, p)


# ---- speculative sampling: whole sequences over several rounds -----------------------------------------------------
def _markov_sequences(P, Q, n_tokens, k, trials, g, with_q):
    """Generate ``n_tokens`` tokens per trial by speculative sampling from a Markov 'target' P [V, V] (rows: next-
    token distributions after each token) with a Markov 'drafter' Q, in rounds of k drafts; returns [trials, n]."""
    rows = torch.arange(trials)
    gen = torch.full((trials, n_tokens), -1, dtype=torch.long)
    length = torch.zeros(trials, dtype=torch.long)
    last = torch.zeros(trials, dtype=torch.long)  # token 0 starts every sequence
    while bool((length < n_tokens).any()):
        drafts, qs, prev = [], [], last
        for _ in range(k):
            qi = Q[prev]  # [trials, V]
            x = sample(qi, g) if with_q else qi.argmax(-1)  # a sampling drafter, or a greedy one (no q)
            drafts.append(x)
            qs.append(qi)
            prev = x
        draft = torch.stack(drafts, 1)  # [trials, k]
        p = P[torch.cat([last[:, None], draft], 1)]  # [trials, k + 1, V]: after the pending token and each draft
        accepted, nxt = verify_sampling_batch(draft, torch.stack(qs, 1) if with_q else None, p, g)
        emitted = torch.cat([draft, torch.zeros(trials, 1, dtype=torch.long)], 1)
        emitted[rows, accepted] = nxt
        for j in range(k + 1):
            write = (j <= accepted) & (length < n_tokens)
            gen[write, length[write]] = emitted[write, j]
            length = length + write.long()
        last = gen[rows, length - 1]
    return gen


@pytest.mark.parametrize("sampling", SETTINGS, ids=str)
@pytest.mark.parametrize("k,with_q", [(1, True), (2, True), (4, True), (2, False)])
def test_sequences_over_several_rounds_follow_autoregressive_sampling(sampling, k, with_q):
    v, n = 4, 3  # 64 sequences: sampling noise of the TV estimate at 2e5 trials is about 0.003-0.004
    g = torch.Generator().manual_seed(10 + k)
    P = probabilities(torch.randn(v, v, generator=g) * 2, sampling)  # target, processed as AR sampling would
    Q = probabilities(torch.randn(v, v, generator=g) * 2, sampling)  # drafter, processed the same way
    gen = _markov_sequences(P, Q, n, k, TRIALS, g, with_q)
    index = (gen * torch.tensor([v ** (n - 1 - i) for i in range(n)])).sum(1)
    exact = torch.tensor([float(P[0, a] * P[a, b] * P[b, c]) for a, b, c in itertools.product(range(v), repeat=3)])
    assert tv(torch.bincount(index, minlength=v ** n), exact) < TV_LIMIT
