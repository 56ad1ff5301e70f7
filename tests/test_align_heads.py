"""The adapter/head zoo of sdlib.align.heads: shapes (unbatched, batched with padding), causality (no row reads a
later row; next-position modules never see the row they predict), the zero-init property of the bottleneck adapters,
save/load round trips, the original's parameter counts at 4096 (built on the meta device), EAGLE-3's rollout
against a step-by-step reference, and the engine's drafters running the attention modules losslessly."""
import pytest
import torch

from engine_fixtures import SIZES, random_pair, requests
from sdlib.align.heads import (KINDS, AttentionAdapter, BottleneckAdapter, Eagle3Head, EagleAdapter, FusionAdapter,
                               FusionHead, LinearAdapter, LinearHead, StackedBottleneckAdapter, TargetHead,
                               Stepper, WideBottleneckAdapter, load_module, param_count, save_module)
from sdlib.decoding.ar import greedy_decode
from sdlib.decoding.drafters import FeatureDrafter, TargetHeadDrafter
from sdlib.decoding.speculative import speculative_decode

HD, HT, N_LAYERS = 24, 32, 3

# name -> (factory, row shape of each positional input, extra keyword arguments of the call)
CASES = {
    "Linear": (lambda: LinearAdapter(HD, HT), [(HD,)], {}),
    "LinearHead": (lambda: LinearHead(HT), [(HT,), (HT,)], {}),
    "FusionHead": (lambda: FusionHead(HT), [(HT,), (HT,)], {}),
    "L1": (lambda: BottleneckAdapter(HD, HT), [(HD,)], {}),
    "L1_square": (lambda: BottleneckAdapter(HT, HT), [(HT,)], {}),
    "L2": (lambda: StackedBottleneckAdapter(HD, HT), [(HD,)], {}),
    "L3": (lambda: WideBottleneckAdapter(HD, HT), [(HD,)], {}),
    "L4": (lambda: AttentionAdapter(HD, HT, max_len=16), [(HD,)], {}),
    "L4_pos": (lambda: AttentionAdapter(HD, HT, max_len=16, pos_embed=True), [(HD,)], {}),
    "L5": (lambda: EagleAdapter(HD, HT, max_len=16), [(HD,), (HT,)], {}),
    "L5_no_tokens": (lambda: EagleAdapter(HD, HT, max_len=16, use_token_embed=False), [(HD,)], {}),
    "B1": (lambda: TargetHead(HT, max_len=16), [(HT,), (HT,)], {}),
    "B1_2blocks": (lambda: TargetHead(HT, n_blocks=2, max_len=16), [(HT,), (HT,)], {}),
    "L5F": (lambda: FusionAdapter(HD, HT, max_len=16), [(HD,), (HT,)], {}),
    "E3": (lambda: Eagle3Head(HT, max_len=16), [(N_LAYERS, HT), (HT,)], {}),
    "E3_fused": (lambda: Eagle3Head(HT, max_len=16), [(HT,), (HT,)], {"fused": True}),
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """The case's module with every parameter moved off its init (zero-init branches included), in eval mode."""
    torch.manual_seed(seed)
    module = CASES[name][0]()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def inputs(name: str, w: int, batch: int | None = None, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lead = (w,) if batch is None else (batch, w)
    return [torch.randn(*lead, *row, generator=g) for row in CASES[name][1]]


def call(module, name: str, args, mask=None) -> torch.Tensor:
    return module(*args, **CASES[name][2], mask=mask)


@pytest.mark.parametrize("name", list(CASES))
def test_batched_rows_equal_unbatched_and_padding_is_zero(name):
    m = build(name)
    w, lengths = 7, [7, 4, 0]
    args = inputs(name, w, batch=3)
    mask = torch.arange(w)[None, :] < torch.tensor(lengths)[:, None]  # [3, 7], the last sequence all padding
    out = call(m, name, args, mask)
    assert out.shape == (3, w, HT) and bool(torch.isfinite(out).all())
    for b, n in enumerate(lengths):
        assert torch.equal(out[b, n:], torch.zeros(w - n, HT))
        if n:
            alone = call(m, name, [a[b, :n] for a in args])  # unbatched [n, ...]
            assert alone.shape == (n, HT)
            torch.testing.assert_close(out[b, :n], alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(call(m, name, args), call(m, name, args, torch.ones(3, w, dtype=torch.bool)))


@pytest.mark.parametrize("name", list(CASES))
def test_no_row_reads_a_later_row_and_each_row_reads_its_own(name):
    m = build(name)
    w = 6
    args = inputs(name, w)
    base = call(m, name, args)
    g = torch.Generator().manual_seed(9)
    for t in range(w - 1):
        later = [a.clone() for a in args]
        for a in later:
            a[t + 1:] += torch.randn(a[t + 1:].shape, generator=g)
        torch.testing.assert_close(call(m, name, later)[: t + 1], base[: t + 1], atol=1e-6, rtol=0)
    for i in range(len(args)):  # each input's row t moves output row t (the check above can fail)
        for t in (0, w // 2, w - 1):
            own = [a.clone() for a in args]
            own[i][t] += torch.randn(own[i][t].shape, generator=g)  # not a constant: LayerNorm ignores that
            assert (call(m, name, own)[t] - base[t]).abs().max() > 1e-3, (i, t)


@pytest.mark.parametrize("name", list(CASES))
def test_growing_windows_give_the_full_rows(name):
    """How the drafters call a module: ``module(window)[-1]`` over the rows so far equals the full pass's row."""
    m = build(name)
    args = inputs(name, 6)
    full = call(m, name, args)
    for i in range(6):
        torch.testing.assert_close(call(m, name, [a[: i + 1] for a in args])[-1], full[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_save_load_round_trip_is_exact(name, tmp_path):
    m = build(name)
    save_module(m, tmp_path / "m.safetensors")
    back = load_module(tmp_path / "m.safetensors")
    assert type(back) is type(m) and back.config == m.config and not back.training
    assert getattr(back, "context", 1) == getattr(m, "context", 1) and back.shift == m.shift
    args = inputs(name, 5)
    assert torch.equal(call(back, name, args), call(m, name, args))


def test_every_kind_is_registered_and_configs_are_plain_json_values():
    assert set(KINDS) >= {"LinearAdapter", "FusionHead", "LinearHead", "BottleneckAdapter",
                          "StackedBottleneckAdapter", "WideBottleneckAdapter", "AttentionAdapter", "EagleAdapter",
                          "TargetHead", "FusionAdapter", "Eagle3Head"}
    for name in CASES:
        m = CASES[name][0]()
        assert all(type(v) in (int, float, bool) for v in m.config.values()), name
        assert KINDS[type(m).__name__] is type(m)


def test_shift_and_context_say_how_rows_line_up():
    assert [CASES[n][0]().shift for n in ("Linear", "L1", "L2", "L3", "L4")] == [0] * 5
    assert [CASES[n][0]().shift for n in ("LinearHead", "FusionHead", "L5", "B1", "L5F", "E3")] == [1] * 6
    assert [CASES[n][0]().context for n in ("Linear", "LinearHead", "FusionHead", "L1", "L2", "L3")] == [1] * 6
    assert [CASES[n][0]().context for n in ("L4", "L5", "B1", "L5F", "E3")] == [16] * 5
    assert Eagle3Head(HT).layers_needed == 3 and Eagle3Head(HT, layers_needed=2).layers_needed == 2


def test_bottleneck_adapters_start_as_the_normalised_input_projection():
    """Up is zero-initialised, so at init the residual branch is exactly 0, in training mode too (dropout)."""
    d = torch.randn(2, 5, HD)
    for cls in (BottleneckAdapter, StackedBottleneckAdapter):
        m = cls(HD, HT).train()
        assert torch.equal(m(d), m.final_norm(m.in_proj(d)))
        sq, x = cls(HT, HT), torch.randn(2, 5, HT)
        assert sq.in_proj is None and torch.equal(sq(x), sq.final_norm(x))
    m = WideBottleneckAdapter(HD, HT).train()
    assert torch.equal(m(d), m.final_norm(m.input_norm(m.in_proj(d))))
    with torch.no_grad():  # and it is the zero Up that makes it so
        m.blocks[0][4].weight.add_(0.1)
    assert not torch.allclose(m(d), m.final_norm(m.input_norm(m.in_proj(d))))


def test_widths_default_to_fractions_of_the_hidden_size():
    assert BottleneckAdapter(384, 512).config["bottleneck"] == 32
    assert WideBottleneckAdapter(384, 512).config["bottleneck"] == 128
    assert AttentionAdapter(384, 512).config["ffn"] == 256 and AttentionAdapter(384, 512).config["heads"] == 8
    assert BottleneckAdapter(24, 64).config["bottleneck"] == 8  # at least 8 wide
    with torch.device("meta"):
        assert BottleneckAdapter(4096, 4096).config["bottleneck"] == 256
        assert WideBottleneckAdapter(4096, 4096).config["bottleneck"] == 1024
        assert TargetHead(4096).config["ffn"] == 2048
    with pytest.raises(ValueError, match="heads=5: must divide the hidden size 32"):
        TargetHead(HT, heads=5)


def test_parameter_counts_at_4096_are_the_originals():
    h, b, w, ffn = 4096, 256, 1024, 2048
    ln = 2 * h
    block = (3 * h * h + 3 * h) + (h * h + h) + 2 * ln + (h * ffn + ffn + ffn * h + h)  # MHA, 2 LNs, FFN
    trunk = block + ln + h * h + h  # + out LN, out Linear
    with torch.device("meta"):
        counts = {
            "L1": param_count(BottleneckAdapter(h, h)),
            "L2": param_count(StackedBottleneckAdapter(h, h)),
            "L3": param_count(WideBottleneckAdapter(h, h)),
            "L4": param_count(AttentionAdapter(h, h)),
            "L5": param_count(EagleAdapter(h, h, max_len=512, use_token_embed=False)),
            "L5F": param_count(FusionAdapter(h, h, max_len=512)),
            "B1": param_count(TargetHead(h)),
            "E3": param_count(Eagle3Head(h)),
            "L1_scale": param_count(BottleneckAdapter(384, 512)),
        }
    assert counts["L1"] == 2 * h * b + ln + 1 + ln == 2_113_537  # Down, Up, block LN, alpha, final LN
    assert counts["L2"] == 3 * (2 * h * b + ln + 1) + ln == 6_324_227
    assert counts["L3"] == ln + 3 * (2 * h * w + 2 * w + 1) + ln == 25_188_355
    assert counts["L4"] == trunk + 1 == 100_714_497
    assert counts["L5"] == trunk + 1 + ln + 512 * h == 102_819_841  # + input LN, positions
    assert counts["L5F"] == trunk + 1 + 2 * (2 * h * h + h) + ln + 512 * h == 169_936_897  # + gate, fuse Linear
    assert counts["B1"] == (2 * h * h + h) + 128 * h + trunk
    assert counts["E3"] == 3 * ln + 3 * h * h + 2 * ln + (2 * h * h + h) + 128 * h + trunk
    assert counts["L1_scale"] == (384 * 512 + 512) + 2 * 512 * 32 + 2 * 512 + 1 + 2 * 512  # + in_proj 384 -> 512


@pytest.mark.parametrize("n_blocks", [1, 2])
def test_eagle3_rollout_equals_drafting_step_by_step(n_blocks):
    torch.manual_seed(n_blocks)
    m = Eagle3Head(HT, n_blocks=n_blocks, max_len=16)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    m.eval()
    t_len, steps = 7, 4
    layers, embeds = inputs("E3", t_len, seed=3)
    out = m.rollout(layers, embeds, steps)
    assert len(out) == steps and all(o.shape == (t_len, HT) for o in out)
    torch.testing.assert_close(out[0], m(layers, embeds), atol=1e-6, rtol=0)
    true = m.fuse(layers)
    for s in range(1, steps):
        assert torch.equal(out[s][t_len - s:], torch.zeros(s, HT))  # no embedding of row t + s there
        for t in range(t_len - s):  # the true rows <= t, then its own predictions as rows t + 1 .. t + s
            feats = torch.cat([true[: t + 1], torch.stack([out[j][t] for j in range(s)])])
            ref = m(feats, embeds[: t + s + 1], fused=True)[-1]
            torch.testing.assert_close(out[s][t], ref, atol=1e-5, rtol=1e-5)
            assert (out[s][t] - out[s - 1][t]).abs().max() > 1e-3
    # row t of step s reads true rows <= t and token embeddings <= t + s only
    t, s = 2, 2
    later_layers, later_embeds = layers.clone(), embeds.clone()
    later_layers[t + 1:] += 1.0
    later_embeds[t + s + 1:] += 1.0
    torch.testing.assert_close(m.rollout(later_layers, later_embeds, steps)[s][t], out[s][t], atol=1e-6, rtol=0)
    # batched with padding: each sequence as alone
    lb, eb = inputs("E3", t_len, batch=2, seed=4)
    mask = torch.arange(t_len)[None, :] < torch.tensor([t_len, 5])[:, None]
    outb = m.rollout(lb, eb, steps, mask=mask)
    for s in range(steps):
        assert outb[s].shape == (2, t_len, HT)
        for b, n in enumerate((t_len, 5)):
            alone = m.rollout(lb[b, :n], eb[b, :n], steps)[s]
            torch.testing.assert_close(outb[s][b, :n], alone, atol=1e-5, rtol=1e-5)
            assert torch.equal(outb[s][b, n:], torch.zeros(t_len - n, HT))


def test_inputs_that_do_not_fit_are_named():
    with pytest.raises(ValueError, match=r"AttentionAdapter: drafter states of shape \[5, 32\]; expected \[W, 24\]"):
        CASES["L4"][0]()(torch.randn(5, HT))
    with pytest.raises(ValueError, match=r"TargetHead: embeds of shape \[4, 32\]"):
        TargetHead(HT)(torch.randn(5, HT), torch.randn(4, HT))
    with pytest.raises(ValueError, match="a window of 17 rows; expected at most max_len=16"):
        CASES["B1"][0]()(torch.randn(17, HT), torch.randn(17, HT))
    with pytest.raises(ValueError, match="a window of 17 rows; expected at most max_len=16"):
        CASES["L4"][0]()(torch.randn(17, HD))
    with pytest.raises(ValueError, match="mask sequence 1 has a real row after padding"):
        CASES["L1"][0]()(torch.randn(2, 3, HD), mask=torch.tensor([[True, True, False], [False, True, True]]))
    with pytest.raises(ValueError, match=r"embeds missing"):
        CASES["L5"][0]()(torch.randn(3, HD))
    with pytest.raises(ValueError, match=r"embeds given"):
        CASES["L5_no_tokens"][0]()(torch.randn(3, HD), torch.randn(3, HT))
    with pytest.raises(ValueError, match=r"Eagle3Head: features of shape \[5, 32\]; expected \[W, 3, 32\]"):
        Eagle3Head(HT)(torch.randn(5, HT), torch.randn(5, HT))
    with pytest.raises(ValueError, match=r"Eagle3Head: features of shape \[5, 2, 32\]; expected \[W, 3, 32\]"):
        Eagle3Head(HT)(torch.randn(5, 2, HT), torch.randn(5, HT))


def test_save_module_keeps_the_old_calling_form_and_refuses_a_wrong_config(tmp_path):
    a = LinearAdapter(HD, HT)
    save_module(a, tmp_path / "old.safetensors", drafter_hidden=HD, target_hidden=HT)  # the form callers use
    save_module(a, tmp_path / "new.safetensors")
    for f in ("old", "new"):
        assert torch.equal(load_module(tmp_path / f"{f}.safetensors").proj.weight, a.proj.weight)
    with pytest.raises(ValueError, match="disagrees with the module"):
        save_module(a, tmp_path / "bad.safetensors", drafter_hidden=HT)


def test_drafters_running_the_attention_modules_stay_lossless():
    """FeatureDrafter with a causal attention adapter and TargetHeadDrafter with the EAGLE head (random weights,
    ``max_len=4``: the engine's window slides past it): greedy output token-identical to the target's."""
    pair = random_pair()
    drafter, target = pair
    torch.manual_seed(2)
    adapter = AttentionAdapter(SIZES.drafter_hidden, SIZES.target_hidden, max_len=4, pos_embed=True)
    head = TargetHead(SIZES.target_hidden, max_len=4)
    makers = [(lambda: FeatureDrafter(drafter, adapter, target.lm_head), "drafter"),
              (lambda: TargetHeadDrafter(head, target.lm_head, target.embed_tokens), "drafter")]
    for i, (t_in, d_in) in enumerate(requests(pair, 4, seed=11)):
        ar = greedy_decode(target, t_in, 12, stop_at_eos=False)
        for make, _ in makers:
            spec = speculative_decode(target, t_in, make(), d_in, 1 + i % 3, 12, stop_at_eos=False, window=2 * (i % 2))
            assert spec.tokens == ar.tokens, i


def test_next_position_adapter_and_eagle3_head_drive_the_engine_losslessly():
    """FeatureDrafter with the next-position L5 adapter (token embeddings) and TargetHeadDrafter with the EAGLE-3 head
    on three target layers (random weights, window sliding past ``max_len=4``): greedy output token-identical to the
    target's; the L5 drafter makes no prefill-window drafts (it cannot draft the answer's first token)."""
    pair = random_pair()
    drafter, target = pair
    torch.manual_seed(4)
    l5 = EagleAdapter(SIZES.drafter_hidden, SIZES.target_hidden, max_len=4)
    e3 = Eagle3Head(SIZES.target_hidden, max_len=4)
    makers = [lambda: FeatureDrafter(drafter, l5, target.lm_head, target_embed=target.embed_tokens),
              lambda: TargetHeadDrafter(e3, target.lm_head, target.embed_tokens, target_layers=(0, 1, 2))]
    for i, (t_in, d_in) in enumerate(requests(pair, 4, seed=12)):
        ar = greedy_decode(target, t_in, 12, stop_at_eos=False)
        for j, make in enumerate(makers):
            spec = speculative_decode(target, t_in, make(), d_in, 1 + i % 3, 12, stop_at_eos=False, window=3)
            assert spec.tokens == ar.tokens, (i, j)
            assert spec.stats.drafted > 0, (i, j)
            if j == 0:
                assert spec.drafts_ready_at_prefill_end == 0


def test_new_drafters_read_the_rows_their_modules_were_trained_on():
    """The first draft of each equals the module applied offline to the rows of the training layout: L5 reads
    drafter row 0 (the prompt's last) with token 0's target embedding; EAGLE-3 reads the target's layers (0, 1, 2)
    at the prompt's last position, fused, with token 0's embedding."""
    pair = random_pair()
    drafter, target = pair
    torch.manual_seed(5)
    l5 = EagleAdapter(SIZES.drafter_hidden, SIZES.target_hidden, max_len=8).eval()
    e3 = Eagle3Head(SIZES.target_hidden, max_len=8).eval()
    t_in, d_in = next(iter(requests(pair, 1, seed=13)))
    layers = (0, 1, 2)
    session = target.start(t_in, layers=layers)
    tok0 = int(session.prompt_logits.argmax())
    e0 = target.embed_tokens(torch.tensor([tok0]))
    with torch.no_grad():
        rows = torch.stack([session.prompt_layers[i][-1:] for i in layers], dim=1)  # [1, 3, H]
        want_e3 = int(target.lm_head(e3(rows, e0)[-1]).argmax())
        d_row = drafter.start(d_in).prompt_hidden[-1:]
        want_l5 = int(target.lm_head(l5(d_row, e0)[-1]).argmax())
    head = TargetHeadDrafter(e3, target.lm_head, target.embed_tokens, target_layers=layers)
    head.begin(None)
    head.feedback([], tok0, rows)
    assert int(head.propose(1).tokens[0]) == want_e3
    feat = FeatureDrafter(drafter, l5, target.lm_head, target_embed=target.embed_tokens)
    feat.begin(d_in)
    assert feat.advance(2) == 0  # nothing before the first token is known
    feat.feedback([], tok0)
    assert int(feat.propose(1).tokens[0]) == want_l5
    with pytest.raises(ValueError, match="reads 3 target layers"):
        TargetHeadDrafter(e3, target.lm_head, target.embed_tokens)
    with pytest.raises(ValueError, match="pass target_embed"):
        FeatureDrafter(drafter, l5, target.lm_head)
    with pytest.raises(ValueError, match="cannot draft from the drafter's sensor"):
        FeatureDrafter(drafter, FusionAdapter(SIZES.drafter_hidden, SIZES.target_hidden), target.lm_head)


@pytest.mark.parametrize("name", ["L1", "L4", "L4_pos", "L5", "B1", "L5F", "E3", "E3_fused"])
def test_stepper_equals_the_full_window_forward(name):
    """Row-by-row evaluation with cached keys/values (the engine's) gives each row's output of the full forward over
    the window (the last ``max_len`` rows), through a rejection (truncate, refeed other rows), past ``max_len`` (the
    window slides) and back under it (caches rebuilt)."""
    torch.manual_seed(6)
    make, shapes, options = CASES[name]
    module = make().eval()
    if hasattr(module, "trunk"):  # a short window and two blocks, so sliding and every block's cache are exercised
        cfg = dict(module.config, max_len=6, n_blocks=2)
        module = type(module)(**{k: v for k, v in cfg.items() if k != "ffn"}).eval()
    stepper = Stepper(module, **options)
    rows = [tuple(torch.randn(*shape) for shape in shapes) for _ in range(10)]
    other = [tuple(torch.randn(*shape) for shape in shapes) for _ in range(3)]

    def full(seq):
        w = seq[-stepper.context:]
        with torch.no_grad():
            return module(*[torch.stack(col) for col in zip(*w)], **options)[-1]

    seq = []
    for i, row in enumerate(rows[:5]):
        seq.append(row)
        assert torch.allclose(stepper.step(*row), full(seq), atol=1e-5), i
    stepper.truncate(2)
    seq = seq[:2]
    for row in other + rows[5:]:  # 2 + 3 + 5 = 10 rows: past max_len = 6
        seq.append(row)
        assert torch.allclose(stepper.step(*row), full(seq), atol=1e-5), len(seq)
    stepper.truncate(3)
    seq = seq[:3]
    seq.append(rows[0])
    assert len(stepper) == 3 and torch.allclose(stepper.step(*rows[0]), full(seq), atol=1e-5)
    stepper.truncate(1)  # several rows in one pass (the engine's refeed of verified rows)
    seq = seq[:1]
    many = stepper.step_many(*[torch.stack(col) for col in zip(*rows[1:4])])
    for j, row in enumerate(rows[1:4]):
        seq.append(row)
        assert torch.allclose(many[j], full(seq), atol=1e-5), j
