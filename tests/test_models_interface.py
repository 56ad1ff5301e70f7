"""The DecodingModel contract, on both wrappers (EventGPT's and Video-LLaVA's, small random scale models): sessions
that append, verify, truncate and fork; the vision path callable on its own; post-norm hidden states for every
prompt position; intermediate layers on request; one verify convention (k drafts -> k + 1 rows)."""
import numpy as np
import pytest
import torch

from sdlib.models import scale
from sdlib.models.interface import DecodingModel
from sdlib.models.tokenizer import train_tokenizer

SIZES = scale.ScaleSizes(target_image=16, target_hidden=64, target_heads=4, target_intermediate=128,
                         event_image=16, drafter_hidden=48, drafter_heads=4, drafter_intermediate=96,
                         target_vision_hidden=32, drafter_vision_hidden=32)
QUESTION = "What do you see on the road ahead?"


@pytest.fixture(scope="module")
def decoders():
    tok = train_tokenizer([QUESTION, "A red car is parked on the right. Two people cross the road."] * 3, 300)
    drafter, target = scale.make_decoders(tok, SIZES, seed=3)
    rng = np.random.default_rng(0)
    return {"drafter": (drafter, rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)),
            "target": (target, rng.integers(0, 256, (8, 20, 24, 3), dtype=np.uint8))}


@pytest.fixture(params=["drafter", "target"])
def model(request, decoders):
    decoder, visual = decoders[request.param]
    return decoder, decoder.prepare(QUESTION, visual)


def test_both_wrappers_share_one_base_class(decoders):
    for decoder, _ in decoders.values():
        assert isinstance(decoder, DecodingModel)
        assert type(decoder).start is DecodingModel.start and type(decoder).score is DecodingModel.score


def test_session_prompt_outputs_match_prefill_and_cover_every_position(model):
    decoder, inputs = model
    session = decoder.start(inputs)
    pre = decoder.prefill(inputs)
    assert session.prompt_len == session.length == pre.prompt_len
    assert torch.equal(session.prompt_logits, pre.logits) and session.prompt_logits.dtype == torch.float32
    assert session.prompt_hidden.shape == (pre.prompt_len, decoder.lm_head.in_features)
    # every prompt position's post-norm state is what the LM head reads: its logits equal the HF model's own forward
    with torch.no_grad():
        reference = decoder.model(input_ids=inputs.input_ids, **inputs.extra).logits[0].float()  # [L, vocab]
        ours = decoder.lm_head(session.prompt_hidden).float()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(session.prompt_logits, reference[-1], atol=1e-5, rtol=0)


def test_vision_path_runs_on_its_own_and_feeds_the_prompt(model):
    decoder, inputs = model
    visual = decoder.encode_visual(inputs)
    assert torch.equal(decoder.start(inputs, visual=visual).prompt_logits, decoder.start(inputs).prompt_logits)


def test_verify_is_one_forward_over_the_pending_token_and_the_drafts(model):
    decoder, inputs = model
    drafts = torch.tensor([7, 9, 11, 4])
    block = decoder.start(inputs)
    verified = block.verify(3, drafts)
    assert verified.logits.shape == (5, len(decoder.tokenizer)) and verified.hidden.shape[0] == 5
    steps = decoder.start(inputs)
    single = [steps.append([t]) for t in [3, *drafts.tolist()]]
    torch.testing.assert_close(verified.logits, torch.cat([s.logits for s in single]), atol=1e-5, rtol=0)
    assert block.length == steps.length == block.prompt_len + 5


def test_truncate_then_append_equals_a_fresh_session(model):
    decoder, inputs = model
    session = decoder.start(inputs)
    session.verify(3, [7, 9, 11])
    session.truncate(session.prompt_len + 2)  # the pending token and one draft accepted
    after = session.append([12, 13])
    fresh = decoder.start(inputs)
    reference = fresh.append([3, 7, 12, 13])
    torch.testing.assert_close(after.logits, reference.logits[2:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="its prompt holds"):
        session.truncate(session.prompt_len - 1)


def test_a_fork_is_independent(model):
    decoder, inputs = model
    session = decoder.start(inputs)
    session.append([3])
    fork = session.fork()
    fork.append([7, 9, 11])
    assert session.length == session.prompt_len + 1 and fork.length == session.prompt_len + 4
    mine = session.append([8])
    fresh = decoder.start(inputs)
    torch.testing.assert_close(mine.logits, fresh.append([3, 8]).logits[1:], atol=1e-5, rtol=0)


def test_intermediate_layers_on_request(model):
    decoder, inputs = model
    n_layers = decoder.decoder.config.num_hidden_layers
    session = decoder.start(inputs, layers=(0, 1, n_layers))
    assert set(session.prompt_layers) == {0, 1, n_layers}
    torch.testing.assert_close(session.prompt_layers[n_layers], session.prompt_hidden)  # the post-norm last layer
    text_ids = inputs.input_ids[0, -3:]  # the prompt's last tokens are text: layer 0 is their embedding
    torch.testing.assert_close(session.prompt_layers[0][-3:], decoder.embed_tokens(text_ids).float())
    scored = session.append([5, 6])
    assert set(scored.layers) == {0, 1, n_layers} and scored.layers[1].shape == scored.hidden.shape
    assert not torch.allclose(scored.layers[1], scored.hidden)  # an intermediate layer, not the output
    with pytest.raises(ValueError, match="layer 9"):
        decoder.start(inputs, layers=(9,))
    assert decoder.start(inputs).append([5]).layers == {}  # none unless asked


def test_malformed_tokens_are_refused(model):
    decoder, inputs = model
    session = decoder.start(inputs)
    for bad in (torch.tensor([[1, 2], [3, 4]]), torch.tensor([], dtype=torch.long)):
        with pytest.raises(ValueError, match="non-empty 1-D"):
            session.append(bad)
