"""The speculative loop with the token drafter is lossless: greedy output token-identical to the target's own greedy
answer (a drafter that always agrees, one that rarely does, EOS inside a draft, the token limit inside a draft,
k = 1), and sampled output distributed as the target's (chi-square tests against the exact distribution). Small
random scale models: losslessness must not depend on trained weights."""
import numpy as np
import pytest
import torch

from sdlib.decoding.ar import ar_decode, greedy_decode
from sdlib.decoding.drafters import TokenDrafter
from sdlib.decoding.processors import Sampling, probabilities
from sdlib.decoding.speculative import speculative_decode
from sdlib.models import scale
from sdlib.models.tokenizer import train_tokenizer

SIZES = scale.ScaleSizes(target_image=16, target_hidden=64, target_heads=4, target_intermediate=128,
                         event_image=16, drafter_hidden=48, drafter_heads=4, drafter_intermediate=96,
                         target_vision_hidden=32, drafter_vision_hidden=32)
QUESTIONS = ["What do you see on the road ahead?", "Describe the traffic.", "Is anyone crossing the street?",
             "Which vehicles are parked?", "What is the weather like?", "How many lanes does the road have?"]


@pytest.fixture(scope="module")
def pair():
    tok = train_tokenizer(QUESTIONS + ["A red car is parked on the right. Two people cross the road."] * 3, 300)
    drafter, target = scale.make_decoders(tok, SIZES, seed=3)
    return drafter, target


def chi2_p_value(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's chi-square goodness of fit: P(chi2 >= the statistic) with len - 1 degrees of freedom."""
    stat = float(((observed.double() - expected.double()) ** 2 / expected.double()).sum())
    df = len(observed) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                         torch.tensor(stat / 2.0, dtype=torch.float64)))


def requests(pair, n, seed=0):
    drafter, target = pair
    rng = np.random.default_rng(seed)
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        frames = rng.integers(0, 256, (8, 20, 24, 3), dtype=np.uint8)
        events = rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
        yield target.prepare(q, frames), drafter.prepare(q, events)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_is_token_identical_with_a_drafter_that_rarely_agrees(pair, k):
    drafter, target = pair
    rounds = 0
    for t_in, d_in in requests(pair, 12, seed=k):
        ar = greedy_decode(target, t_in, 24, stop_at_eos=False)
        spec = speculative_decode(target, t_in, TokenDrafter(drafter, target.lm_head.out_features), d_in, k, 24,
                                  stop_at_eos=False)
        assert spec.tokens == ar.tokens
        assert spec.stats.rounds + spec.stats.plain_steps == len(spec.round_ms)
        rounds += spec.stats.rounds
    assert rounds >= 12 * (22 // (k + 1))  # drafts really were verified (a round emits at most k + 1 tokens)


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_with_the_target_as_its_own_drafter_accepts_everything(pair, k):
    _, target = pair
    for t_in, _ in requests(pair, 4, seed=10 + k):
        ar = greedy_decode(target, t_in, 21, stop_at_eos=False)
        spec = speculative_decode(target, t_in, TokenDrafter(target, target.lm_head.out_features), t_in, k, 21,
                                  stop_at_eos=False)
        assert spec.tokens == ar.tokens
        assert spec.stats.acceptance_rate == 1.0 and spec.stats.histogram()[0] == 0
        # the 20 tokens after the first: every round emits its drafts plus the bonus, a plain step one token
        assert sum(spec.stats.offered) + spec.stats.rounds + spec.stats.plain_steps == 20


def test_eos_inside_a_draft_and_the_token_limit_inside_a_draft(pair):
    _, target = pair
    t_in, _ = next(iter(requests(pair, 1, seed=20)))
    free = greedy_decode(target, t_in, 30, stop_at_eos=False)
    later = [t for i, t in enumerate(free.tokens) if i >= 3 and t not in free.tokens[:i]]
    assert later, "the random target repeats itself from the start; pick another seed"
    eos = later[0]
    target.eos_token_id, saved = eos, target.eos_token_id
    try:
        ar = greedy_decode(target, t_in, 30)
        assert ar.tokens[-1] == eos and len(ar.tokens) < 30
        for k in (2, 5, 8):  # the target as drafter: the EOS arrives inside an accepted draft
            spec = speculative_decode(target, t_in, TokenDrafter(target, target.lm_head.out_features), t_in, k, 30)
            assert spec.tokens == ar.tokens and spec.stopped_at_eos
    finally:
        target.eos_token_id = saved
    for limit in (2, 7, 11):  # the limit falls inside a round of 5 drafts
        spec = speculative_decode(target, t_in, TokenDrafter(target, target.lm_head.out_features), t_in, 5, limit,
                                  stop_at_eos=False)
        assert spec.tokens == free.tokens[:limit]


def test_sampled_answers_follow_the_target_distribution(pair):
    """Exact distribution of the first three tokens under top-k = 4 sampling (64 sequences, computed from the target's
    logits) against 4,000 speculative runs (the first token from the prefill, then a round with one draft and the
    target's own token): chi-square p > 0.001. The drafter is the target model sampling hotter, so that drafts are
    both accepted and rejected (the random drafter's top tokens never meet the target's)."""
    _, target = pair
    t_in, _ = next(iter(requests(pair, 1, seed=30)))
    s = Sampling(temperature=1.5, top_k=4)
    exact = {}
    p1 = probabilities(target.start(t_in).prompt_logits, s)
    for a in torch.nonzero(p1).squeeze(1).tolist():
        p2 = probabilities(target.start(t_in).append([a]).logits[-1], s)
        for b in torch.nonzero(p2).squeeze(1).tolist():
            p3 = probabilities(target.start(t_in).append([a, b]).logits[-1], s)
            for c in torch.nonzero(p3).squeeze(1).tolist():
                exact[(a, b, c)] = float(p1[a] * p2[b] * p3[c])
    assert len(exact) == 64
    g = torch.Generator().manual_seed(0)
    counts = dict.fromkeys(exact, 0)
    n, accepted = 4000, 0
    for _ in range(n):
        hot = TokenDrafter(target, target.lm_head.out_features, draft_sampling=Sampling(temperature=3.0, top_k=8))
        spec = speculative_decode(target, t_in, hot, t_in, 3, 3, s, g, stop_at_eos=False)
        counts[tuple(spec.tokens)] += 1  # a KeyError would be a sequence the target cannot produce
        assert spec.stats.offered == [1]
        accepted += spec.stats.accepted_total
    assert 0.05 * n < accepted < 0.95 * n  # both branches of the rule ran (acceptance and residual sampling)
    observed = torch.tensor([counts[c] for c in exact], dtype=torch.float64)
    expected = torch.tensor([exact[c] for c in exact], dtype=torch.float64) * n
    assert chi2_p_value(observed, expected) > 1e-3


def test_sampling_with_deterministic_drafts_is_lossless_in_distribution(pair):
    """Greedy drafts (no q) under a sampling target: the one-hot rule; the first token's distribution is exact."""
    drafter, target = pair
    t_in, d_in = next(iter(requests(pair, 1, seed=31)))
    s = Sampling(temperature=1.0, top_k=3)
    session = target.start(t_in)
    p1 = probabilities(session.prompt_logits, s)
    first = target.start(t_in)
    a = int(torch.argmax(p1))
    p2 = probabilities(first.append([a]).logits[-1], s)
    g = torch.Generator().manual_seed(1)
    second = []
    for _ in range(1500):
        greedy_drafter = TokenDrafter(drafter, target.lm_head.out_features, sample_drafts=False)
        spec = speculative_decode(target, t_in, greedy_drafter, d_in, 2, 3, s, g, stop_at_eos=False)
        if spec.tokens[0] == a:
            second.append(spec.tokens[1])
    counts = torch.bincount(torch.tensor(second), minlength=p2.numel()).double()
    support = torch.nonzero(p2).squeeze(1)
    assert counts.sum() == counts[support].sum()  # nothing outside the target's support
    expected = p2[support].double() * counts.sum()
    assert chi2_p_value(counts[support], expected) > 1e-3


def test_ar_sampling_and_speculative_sampling_agree_on_the_first_token(pair):
    """Cross-check of the harness itself: AR sampling's first token has the same distribution."""
    drafter, target = pair
    t_in, _ = next(iter(requests(pair, 1, seed=32)))
    s = Sampling(temperature=1.0, top_k=3)
    p1 = probabilities(target.start(t_in).prompt_logits, s)
    g = torch.Generator().manual_seed(2)
    firsts = [ar_decode(target, t_in, 1, s, g).tokens[0] for _ in range(1500)]
    counts = torch.bincount(torch.tensor(firsts), minlength=p1.numel()).double()
    support = torch.nonzero(p1).squeeze(1)
    expected = p1[support].double() * 1500
    assert chi2_p_value(counts[support], expected) > 1e-3
