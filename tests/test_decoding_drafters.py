"""Every drafter is lossless in the loop, with random weights (losslessness must not depend on training): greedy
output token-identical to the target's greedy answer; sampled output distributed as the target's (chi-square against
the exact distribution of the first tokens, both branches of the rule exercised). Plus the chain rule (window drafts,
pipelining), dynamic draft length, the truncation check and the two_devices placement in real processes."""
import functools

import pytest
import torch

from engine_fixtures import SIZES, random_pair, requests, save_pair
from sdlib.decoding.ar import greedy_decode
from sdlib.decoding.drafters import (FeatureDrafter, PromptLookupDrafter, TargetHeadDrafter, TokenDrafter,
                                    TwoPhaseDrafter)
from sdlib.align.heads import FusionHead, LinearAdapter, load_module, save_module
from sdlib.decoding.placement import PairDrafter, ProcessDrafter, split_cores
from sdlib.decoding.processors import Sampling, probabilities
from sdlib.decoding.speculative import window_chain, speculative_decode
from test_decoding_speculative import chi2_p_value


@pytest.fixture(scope="module")
def pair():
    return random_pair()


def identity_adapter(hidden: int) -> LinearAdapter:
    a = LinearAdapter(hidden, hidden)
    with torch.no_grad():
        a.proj.weight.copy_(torch.eye(hidden))
        a.proj.bias.zero_()
    return a


def drafters(pair):
    """name -> (factory of a fresh drafter, which inputs it reads: 'drafter' or 'target')."""
    drafter, target = pair
    v = target.lm_head.out_features
    torch.manual_seed(5)
    adapter = LinearAdapter(SIZES.drafter_hidden, SIZES.target_hidden)
    head = FusionHead(SIZES.target_hidden)
    return {
        "token": (lambda: TokenDrafter(drafter, v), "drafter"),
        "feature": (lambda: FeatureDrafter(drafter, adapter, target.lm_head), "drafter"),
        "target_head": (lambda: TargetHeadDrafter(head, target.lm_head, target.embed_tokens), "drafter"),
        "two_phase": (lambda: TwoPhaseDrafter(FeatureDrafter(drafter, adapter, target.lm_head),
                                              TargetHeadDrafter(head, target.lm_head, target.embed_tokens)), "drafter"),
        "prompt_lookup": (lambda: PromptLookupDrafter(v), "target"),
        # self-drafters agree with the target, so the accepting paths of the loop run too
        "feature_self": (lambda: FeatureDrafter(target, identity_adapter(SIZES.target_hidden), target.lm_head),
                         "target"),
        "two_phase_self": (lambda: TwoPhaseDrafter(
            FeatureDrafter(target, identity_adapter(SIZES.target_hidden), target.lm_head),
            TargetHeadDrafter(head, target.lm_head, target.embed_tokens)), "target"),
    }


@pytest.mark.parametrize("name", ["token", "feature", "target_head", "two_phase", "prompt_lookup", "feature_self",
                                  "two_phase_self"])
def test_greedy_is_token_identical_on_120_requests(pair, name):
    """120 requests per drafter, k cycling 1..5, a window of drafts before the prefill for half of them."""
    drafter, target = pair
    make, reads = drafters(pair)[name]
    accepted = 0
    for i, (t_in, d_in) in enumerate(requests(pair, 120, seed=7)):
        k = 1 + i % 5
        ar = greedy_decode(target, t_in, 16, stop_at_eos=False)
        spec = speculative_decode(target, t_in, make(), t_in if reads == "target" else d_in, k, 16,
                                  stop_at_eos=False, window=4 * (i % 2))
        assert spec.tokens == ar.tokens, (name, i, k)
        accepted += spec.stats.accepted_total
    if name == "prompt_lookup":  # random targets repeat themselves: the n-gram drafts are accepted at times
        assert accepted > 0
    if name == "feature_self":
        assert accepted > 120 * 8  # the self-drafter's drafts were verified and accepted
    if name == "two_phase_self":  # each of the 60 windows (the first token and 3 drafts) is used whole: at least 2
        assert accepted >= 60 * 2  # of its drafts are accepted as drafts (the rest may come as bonus tokens)


def test_window_drafts_are_checked_against_the_first_token_and_used(pair):
    """A self-drafter's window (drafted before the target's prefill) starts with the target's first token; all of
    it is used; a random drafter's window is discarded and the output is still the target's."""
    drafter, target = pair
    t_in, d_in = next(iter(requests(pair, 1, seed=8)))
    ar = greedy_decode(target, t_in, 20, stop_at_eos=False)
    self_drafter = drafters(pair)["feature_self"][0]()
    spec = speculative_decode(target, t_in, self_drafter, t_in, 4, 20, stop_at_eos=False, window=6)
    assert spec.tokens == ar.tokens
    assert spec.drafts_ready_at_prefill_end == 6 and spec.window_tokens_used == 6
    assert spec.stats.accepted[0] == 4  # the first round offered window drafts 2-5, all accepted
    other = drafters(pair)["token"][0]()
    spec = speculative_decode(target, t_in, other, d_in, 4, 20, stop_at_eos=False, window=6)
    assert spec.tokens == ar.tokens and spec.drafts_ready_at_prefill_end == 6


def test_modelled_placement_is_labelled_and_subtracts_the_shorter_prefill(pair):
    drafter, target = pair
    t_in, d_in = next(iter(requests(pair, 1, seed=9)))
    spec = speculative_decode(target, t_in, drafters(pair)["token"][0](), d_in, 3, 12, stop_at_eos=False, window=4,
                              modelled=True)
    assert spec.placement == "modelled"
    assert spec.modelled_total_ms == pytest.approx(spec.total_ms - min(spec.prefill_ms, spec.drafter_start_ms))
    assert spec.tokens == greedy_decode(target, t_in, 12, stop_at_eos=False).tokens


def test_confidence_cuts_proposals_but_not_the_output(pair):
    drafter, target = pair
    v = target.lm_head.out_features
    offered_fixed, offered_dynamic = [], []
    for t_in, d_in in requests(pair, 8, seed=10):
        ar = greedy_decode(target, t_in, 16, stop_at_eos=False)
        fixed = speculative_decode(target, t_in, TokenDrafter(drafter, v), d_in, 4, 16, stop_at_eos=False)
        dynamic = speculative_decode(target, t_in, TokenDrafter(drafter, v, min_confidence=0.99), d_in, 4, 16,
                                     stop_at_eos=False)
        assert dynamic.tokens == ar.tokens == fixed.tokens
        offered_fixed += fixed.stats.offered
        offered_dynamic += dynamic.stats.offered
    # a random drafter is never 99% sure: every dynamic round offers one draft
    assert set(offered_dynamic) == {1} and max(offered_fixed) == 4


def test_after_rejections_the_target_state_equals_a_fresh_prefill(pair, monkeypatch):
    """The loop's target session, after rounds with rejected drafts, against a fresh prefill of the accepted text."""
    drafter, target = pair
    sessions = []
    start = type(target).start

    def recording_start(self, *args, **kwargs):
        s = start(self, *args, **kwargs)
        sessions.append(s)
        return s

    monkeypatch.setattr(type(target), "start", recording_start)
    t_in, d_in = next(iter(requests(pair, 1, seed=11)))
    spec = speculative_decode(target, t_in, drafters(pair)["token"][0](), d_in, 4, 18, stop_at_eos=False)
    assert spec.stats.drafted > spec.stats.accepted_total  # drafts were rejected
    session = sessions[0]
    assert session.length == session.prompt_len + len(spec.tokens) - 1  # the last token is pending
    ours = session.append([spec.tokens[-1]]).logits[-1]
    fresh = target.start(t_in).append(spec.tokens).logits[-1]
    assert torch.allclose(ours, fresh, atol=1e-5, rtol=0)


def exact_two_tokens(target, t_in, s):
    p1 = probabilities(target.start(t_in).prompt_logits, s)
    exact = {}
    for a in torch.nonzero(p1).squeeze(1).tolist():
        p2 = probabilities(target.start(t_in).append([a]).logits[-1], s)
        for b in torch.nonzero(p2).squeeze(1).tolist():
            exact[(a, b)] = float(p1[a] * p2[b])
    return exact


@pytest.mark.parametrize("name", ["feature_self", "target_head", "two_phase_self"])
def test_sampled_generation_follows_the_target_distribution(pair, name):
    """Three sampled tokens, 2,000 runs: the first two tokens' joint distribution (16 outcomes under top-k = 4)
    against the exact one; the drafter samples hotter than the target so that drafts are accepted and rejected."""
    drafter, target = pair
    t_in, d_in = next(iter(requests(pair, 1, seed=12)))
    s = Sampling(temperature=1.5, top_k=4)
    hot = Sampling(temperature=3.0, top_k=8)
    head = FusionHead(SIZES.target_hidden)
    v = target.lm_head.out_features

    def make():
        if name == "target_head":
            # a random head's top tokens miss the target's: it samples from nearly everything, so some land
            return TargetHeadDrafter(head, target.lm_head, target.embed_tokens, draft_sampling=Sampling(5.0))
        feat = FeatureDrafter(target, identity_adapter(SIZES.target_hidden), target.lm_head, draft_sampling=hot)
        if name == "feature_self":
            return feat
        return TwoPhaseDrafter(feat, TokenDrafter(target, v, draft_sampling=hot))

    exact = exact_two_tokens(target, t_in, s)
    counts = dict.fromkeys(exact, 0)
    g = torch.Generator().manual_seed(3)
    n, accepted, drafted = 2000, 0, 0
    for i in range(n):
        spec = speculative_decode(target, t_in, make(), t_in, 2, 3, s, g, stop_at_eos=False, window=2 * (i % 2))
        counts[tuple(spec.tokens[:2])] += 1
        accepted += spec.stats.accepted_total
        drafted += spec.stats.drafted
    assert 0 < accepted < drafted  # both branches of the rule ran
    observed = torch.tensor([counts[c] for c in exact], dtype=torch.float64)
    expected = torch.tensor([exact[c] for c in exact], dtype=torch.float64) * n
    assert chi2_p_value(observed, expected) > 1e-3


# -- two_devices: the drafter in its own process ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_pair(pair, tmp_path_factory):
    d = save_pair(*pair, tmp_path_factory.mktemp("pair"))
    save_module(identity_adapter(SIZES.target_hidden), d / "identity.safetensors", drafter_hidden=SIZES.target_hidden,
                target_hidden=SIZES.target_hidden)
    return d


def test_saved_adapter_round_trips(saved_pair):
    a = load_module(saved_pair / "identity.safetensors")
    assert isinstance(a, LinearAdapter) and torch.equal(a.proj.weight, torch.eye(SIZES.target_hidden))


@pytest.mark.parametrize("spec_kwargs", [
    dict(kind="token", model="drafter", ahead=0), dict(kind="token", model="drafter", ahead=4),
    dict(kind="feature", model="target", ahead=0), dict(kind="feature", model="target", ahead=4),
    dict(kind="feature", model="target", ahead=0, two_phase=True)])
def test_process_drafter_is_lossless_and_counts_its_window(pair, saved_pair, spec_kwargs):
    """two_devices: greedy identical on 6 requests, and the first two sampled tokens distributed as the target's."""
    drafter, target = pair
    kw = dict(spec_kwargs)
    ahead, two_phase = kw.pop("ahead"), kw.pop("two_phase", False)
    factory = PairDrafter(str(saved_pair), adapter=str(saved_pair / "identity.safetensors"), **kw)
    _, cores = split_cores()
    reads_target = kw["model"] == "target"
    head = FusionHead(SIZES.target_hidden)
    with ProcessDrafter(factory, cores=cores, window=6, ahead=ahead) as remote:
        def make():
            if two_phase:  # the window from the process, then a (random) target head in the target's process
                return TwoPhaseDrafter(remote, TargetHeadDrafter(head, target.lm_head, target.embed_tokens))
            return remote

        for t_in, d_in in requests(pair, 6, seed=13):
            ar = greedy_decode(target, t_in, 16, stop_at_eos=False)
            spec = speculative_decode(target, t_in, make(), t_in if reads_target else d_in, 3, 16, stop_at_eos=False)
            assert spec.tokens == ar.tokens and spec.placement == "two_devices"
            window = window_chain(spec.drafter_events)  # how far it got before hearing the first token: timing
            assert spec.drafts_ready_at_prefill_end <= len(window) <= 6
            if reads_target:  # the self-drafter's window is the target's own answer: all of it is used
                assert spec.window_tokens_used == len(window)
                if not two_phase:
                    assert spec.stats.acceptance_rate == 1.0
        s = Sampling(temperature=1.0, top_k=3)
        t_in, d_in = next(iter(requests(pair, 1, seed=14)))
        exact = exact_two_tokens(target, t_in, s)
        counts = dict.fromkeys(exact, 0)
        g = torch.Generator().manual_seed(4)
        n = 600
        for _ in range(n):
            spec = speculative_decode(target, t_in, make(), t_in if reads_target else d_in, 2, 3, s, g,
                                      stop_at_eos=False)
            counts[tuple(spec.tokens[:2])] += 1
        observed = torch.tensor([counts[c] for c in exact], dtype=torch.float64)
        expected = torch.tensor([exact[c] for c in exact], dtype=torch.float64) * n
        assert chi2_p_value(observed, expected) > 1e-3


def test_process_drafter_reports_the_childs_error(saved_pair):
    with pytest.raises(RuntimeError, match="adapter"):
        ProcessDrafter(functools.partial(PairDrafter, str(saved_pair), "feature"))


# -- a drafter with its own token ids: translation through a pairing, q renormalised over the mapped ids ------------
def permuted_twin(target, unmapped: list[int]):
    """(drafter, pairing): a copy of the target whose vocabulary is a shuffle of the target's (its embedding and LM-head
    rows permuted alike, special tokens fixed), so that through the pairing it predicts exactly what the target does,
    except that the target tokens ``unmapped`` have no drafter counterpart."""
    import copy

    from sdlib.models.pairing import UNMAPPED, TokenizerPairing

    v = target.lm_head.out_features
    cfg = target.model.config
    fixed = {i for i in (getattr(cfg, "video_token_id", None), getattr(cfg, "image_token_id", None),
                         target.eos_token_id, target.tokenizer.pad_token_id, target.tokenizer.bos_token_id)
             if i is not None and 0 <= i < v}
    movable = torch.tensor([i for i in range(v) if i not in fixed])
    g = torch.Generator().manual_seed(0)
    to_target = torch.arange(v)
    to_target[movable] = movable[torch.randperm(len(movable), generator=g)]  # drafter id -> target id
    twin = copy.deepcopy(target)
    with torch.no_grad():
        emb, head = twin.embed_tokens, twin.lm_head
        emb.weight.copy_(emb.weight[to_target].clone())
        if head.weight.data_ptr() != emb.weight.data_ptr():
            head.weight.copy_(head.weight[to_target].clone())
    to_draft = torch.empty(v, dtype=torch.long)
    to_draft[to_target] = torch.arange(v)
    draft_to_target = to_target.clone()
    for t in unmapped:
        draft_to_target[to_draft[t]] = UNMAPPED
        to_draft[t] = UNMAPPED
    pairing = TokenizerPairing(identical=False, draft_to_target=draft_to_target, target_to_draft=to_draft,
                               vocab_coverage=1 - len(unmapped) / v, text_coverage=None, n_sample_tokens=0)
    return twin, pairing, to_target


def twin_inputs(t_in, to_target):
    from sdlib.models.interface import ModelInputs

    to_draft = torch.empty_like(to_target)
    to_draft[to_target] = torch.arange(len(to_target))
    ids = t_in.input_ids.clone()
    ok = (ids >= 0) & (ids < len(to_target))
    ids[ok] = to_draft[ids[ok]]
    return ModelInputs(ids, t_in.extra, t_in.prompt_text)


def test_a_drafter_with_other_ids_drafts_through_the_pairing(pair):
    """Greedy: with every token mapped the permuted twin's drafts are all accepted (the translation is right); with
    some of the target's favourite tokens unmapped it proposes none of them, stops where the text holds one, and the
    output is still the target's."""
    _, target = pair
    v = target.lm_head.out_features
    t_in, _ = next(iter(requests(pair, 1, seed=15)))
    ar = greedy_decode(target, t_in, 20, stop_at_eos=False)
    twin, pairing, to_target = permuted_twin(target, [])
    spec = speculative_decode(target, t_in, TokenDrafter(twin, v, pairing), twin_inputs(t_in, to_target), 4, 20,
                              stop_at_eos=False)
    assert spec.tokens == ar.tokens and spec.stats.acceptance_rate == 1.0
    favourite = sorted(set(ar.tokens[5:]))[:2]
    twin, pairing, to_target = permuted_twin(target, favourite)
    spec = speculative_decode(target, t_in, TokenDrafter(twin, v, pairing), twin_inputs(t_in, to_target), 4, 20,
                              stop_at_eos=False)
    assert spec.tokens == ar.tokens
    drafted = [t for _, kind, t in spec.drafter_events if kind == "draft"]
    assert drafted and not set(drafted) & set(favourite)


def test_sampling_through_a_pairing_renormalises_q_and_stays_lossless(pair):
    """The twin's distribution restricted to mapped ids is the q it samples from; two sampled tokens follow p."""
    _, target = pair
    v = target.lm_head.out_features
    t_in, _ = next(iter(requests(pair, 1, seed=16)))
    s = Sampling(temperature=1.0, top_k=4)
    p1 = probabilities(target.start(t_in).prompt_logits, s)
    top = torch.topk(p1, 2).indices.tolist()
    twin, pairing, to_target = permuted_twin(target, [top[0]])  # the target's favourite first token is unmapped
    drafter = TokenDrafter(twin, v, pairing, draft_sampling=Sampling(temperature=1.5))
    drafter.begin(twin_inputs(t_in, to_target), s, torch.Generator().manual_seed(0))
    q = drafter.propose(1).probs[0]
    assert q[top[0]] == 0 and float(q.sum()) == pytest.approx(1.0, abs=1e-5)
    exact = exact_two_tokens(target, t_in, s)
    counts = dict.fromkeys(exact, 0)
    g = torch.Generator().manual_seed(5)
    n = 1500
    for _ in range(n):
        d = TokenDrafter(twin, v, pairing, draft_sampling=Sampling(temperature=1.5))
        spec = speculative_decode(target, t_in, d, twin_inputs(t_in, to_target), 2, 3, s, g, stop_at_eos=False)
        counts[tuple(spec.tokens[:2])] += 1
    observed = torch.tensor([counts[c] for c in exact], dtype=torch.float64)
    expected = torch.tensor([exact[c] for c in exact], dtype=torch.float64) * n
    assert chi2_p_value(observed, expected) > 1e-3
