"""The autoregressive baseline through the DecodingModel interface: token-identical to transformers' own `generate`,
greedy (with and without an EOS stop) and sampled with the same seed; block scoring equal to single steps; cache
cropping that re-scores exactly."""
import numpy as np
import pytest
import torch
from transformers import VideoLlavaForConditionalGeneration

from sdlib.decoding.ar import ARResult, ar_decode, greedy_decode
from sdlib.decoding.processors import Sampling
from sdlib.models.interface import cache_length
from sdlib.models.tokenizer import train_tokenizer
from sdlib.models.videollava import ResizeNormalize, VideoLlavaDecoder, video_llava_config

COLOURS = ["red", "blue", "green", "white", "black"]
THINGS = ["car", "truck", "bus", "cyclist", "pedestrian"]
SIDES = ["left", "right", "front"]
QUESTIONS = [f"Is there a {c} {t} on the {s}?" for c in COLOURS for t in THINGS for s in SIDES]  # 75 questions
SIZE, PATCH = 16, 8  # 8 frames x (2*2 + 1) = 40 <video> tokens: fast enough for many prompts
MAX_NEW = 12


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(QUESTIONS + ["USER: <video>\n ASSISTANT: The road is wet; two cars wait ahead."])


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    cfg = video_llava_config(tok, image_size=SIZE, patch_size=PATCH, text_hidden=64, text_layers=2)
    return VideoLlavaForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def decoder(tok, model):
    return VideoLlavaDecoder(model, tok, frame_processor=ResizeNormalize(SIZE))


def clip(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (int(rng.integers(8, 21)), SIZE, SIZE, 3), dtype=np.uint8)  # [N, H, W, 3]


def hf_greedy(model, inputs, max_new_tokens: int, eos_token_id) -> list[int]:
    with torch.no_grad():
        out = model.generate(input_ids=inputs.input_ids, pixel_values_videos=inputs.extra["pixel_values_videos"],
                             do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id)
    return out[0, inputs.input_ids.shape[1]:].tolist()


def test_greedy_is_token_identical_to_generate_on_25_prompts(decoder, model):
    rng = np.random.default_rng(0)
    distinct = set()
    for question in QUESTIONS[::3]:  # 25 different questions, each with its own random clip
        inputs = decoder.prepare(question, clip(rng))
        res = greedy_decode(decoder, inputs, MAX_NEW)
        assert res.tokens == hf_greedy(model, inputs, MAX_NEW, decoder.eos_token_id), question
        distinct.add(tuple(res.tokens))
        # hidden[i] is the state whose lm_head output chose tokens[i]
        assert res.hidden.shape == (res.n_tokens, model.config.text_config.hidden_size)
        assert decoder.lm_head(res.hidden).argmax(-1).tolist() == res.tokens
        assert len(res.step_times_ms) == res.n_tokens - 1 and min(res.step_times_ms) > 0 and res.prefill_ms > 0
        assert res.prompt_len == inputs.input_ids.shape[1]
    assert len(distinct) >= 5  # the prompts really lead to different answers


def test_eos_stop_matches_generate(decoder, tok, model):
    rng = np.random.default_rng(1)
    # take as "EOS" a token the model emits mid-answer, so the stop really happens inside the answer
    for question in QUESTIONS[1::3]:
        inputs = decoder.prepare(question, clip(rng))
        free = greedy_decode(decoder, inputs, MAX_NEW, stop_at_eos=False)
        later = [t for i, t in enumerate(free.tokens) if i >= 2 and t not in free.tokens[:i]]
        if later:
            break
    else:
        pytest.fail("no prompt emits a new token after position 2; the random model is degenerate")
    eos = later[0]
    stop_at = free.tokens.index(eos)
    dec = VideoLlavaDecoder(model, tok, frame_processor=ResizeNormalize(SIZE), eos_token_id=eos)
    res = greedy_decode(dec, inputs, MAX_NEW)
    assert res.tokens == free.tokens[: stop_at + 1] == hf_greedy(model, inputs, MAX_NEW, eos)
    assert res.stopped_at_eos and res.n_tokens == stop_at + 1 < MAX_NEW
    assert not free.stopped_at_eos and free.n_tokens == MAX_NEW
    ignoring = greedy_decode(dec, inputs, MAX_NEW, stop_at_eos=False)
    assert ignoring.tokens == free.tokens and not ignoring.stopped_at_eos


@pytest.mark.parametrize("sampling", [Sampling(temperature=1.0), Sampling(temperature=0.8, top_k=20),
                                      Sampling(temperature=1.2, top_p=0.9)], ids=str)
def test_sampling_is_token_identical_to_generate_seeded_alike(decoder, model, sampling):
    rng = np.random.default_rng(5)
    distinct = set()
    for i, question in enumerate(QUESTIONS[2::8]):  # 10 prompts
        inputs = decoder.prepare(question, clip(rng))
        torch.manual_seed(100 + i)
        ours = ar_decode(decoder, inputs, MAX_NEW, sampling).tokens
        torch.manual_seed(100 + i)
        with torch.no_grad():
            out = model.generate(input_ids=inputs.input_ids, pixel_values_videos=inputs.extra["pixel_values_videos"],
                                 do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k,
                                 top_p=sampling.top_p, max_new_tokens=MAX_NEW,
                                 eos_token_id=decoder.eos_token_id)
        assert ours == out[0, inputs.input_ids.shape[1]:].tolist(), question
        distinct.add(tuple(ours))
    assert len(distinct) >= 8


def test_a_seeded_generator_makes_sampling_reproducible(decoder):
    inputs = decoder.prepare(QUESTIONS[3], clip(np.random.default_rng(6)))
    s = Sampling(temperature=1.0)
    runs = [ar_decode(decoder, inputs, MAX_NEW, s, torch.Generator().manual_seed(seed), stop_at_eos=False).tokens
            for seed in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]  # reproducible, and really sampled


def test_scoring_k_tokens_at_once_equals_k_single_steps(decoder):
    inputs = decoder.prepare(QUESTIONS[7], clip(np.random.default_rng(2)))
    gen = torch.Generator().manual_seed(0)
    block = torch.randint(7, len(decoder.tokenizer), (6,), generator=gen)  # arbitrary "drafts": [k]
    a = decoder.prefill(inputs)
    together = decoder.score(block, a.cache)
    b = decoder.prefill(inputs)
    single = [decoder.score(block[i: i + 1], b.cache) for i in range(len(block))]
    assert together.logits.shape == (6, len(decoder.tokenizer))
    torch.testing.assert_close(together.logits, torch.cat([s.logits for s in single]), atol=1e-5, rtol=0)
    torch.testing.assert_close(together.hidden, torch.cat([s.hidden for s in single]), atol=1e-5, rtol=0)
    assert cache_length(a.cache) == cache_length(b.cache) == a.prompt_len + 6


def test_crop_then_rescore_reproduces_the_logits(decoder):
    inputs = decoder.prepare(QUESTIONS[11], clip(np.random.default_rng(3)))
    gen = torch.Generator().manual_seed(1)
    drafts = torch.randint(7, len(decoder.tokenizer), (6,), generator=gen)  # [k]
    pre = decoder.prefill(inputs)
    first = decoder.score(drafts, pre.cache)
    decoder.crop(pre.cache, pre.prompt_len + 2)  # accept 2 drafts, reject 4
    assert cache_length(pre.cache) == pre.prompt_len + 2
    again = decoder.score(drafts[2:], pre.cache)
    torch.testing.assert_close(again.logits, first.logits[2:], atol=1e-5, rtol=0)
    # a different continuation after the crop equals the same continuation scored on a fresh cache
    other = torch.tensor([int(first.logits[1].argmax()), 9, 10])
    decoder.crop(pre.cache, pre.prompt_len + 2)
    after_crop = decoder.score(other, pre.cache)
    fresh = decoder.prefill(inputs)
    fresh_scored = decoder.score(torch.cat([drafts[:2], other]), fresh.cache)
    torch.testing.assert_close(after_crop.logits, fresh_scored.logits[2:], atol=1e-5, rtol=0)
    decoder.crop(pre.cache, pre.prompt_len)  # back to the prompt: the first token's logits again
    torch.testing.assert_close(decoder.score(drafts[:1], pre.cache).logits, first.logits[:1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cannot crop"):
        decoder.crop(pre.cache, pre.prompt_len + 5)


def test_result_bookkeeping_and_argument_checks(decoder):
    inputs = decoder.prepare(QUESTIONS[20], clip(np.random.default_rng(4)))
    one = greedy_decode(decoder, inputs, 1, keep_logits=True)
    assert isinstance(one, ARResult) and one.n_tokens == 1 and one.step_times_ms == []
    assert np.isnan(one.ms_per_token) and one.total_ms == one.prefill_ms
    res = greedy_decode(decoder, inputs, 5, stop_at_eos=False, keep_logits=True)
    assert res.logits.shape == (5, len(decoder.tokenizer)) and res.logits.argmax(-1).tolist() == res.tokens
    torch.testing.assert_close(res.logits[0], one.logits[0])
    assert res.total_ms == pytest.approx(res.prefill_ms + sum(res.step_times_ms))
    assert res.ms_per_token == pytest.approx(sum(res.step_times_ms) / 4)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        greedy_decode(decoder, inputs, 0)
    for bad in (torch.tensor([[1, 2], [3, 4]]), torch.tensor([], dtype=torch.long)):
        with pytest.raises(ValueError, match=r"tokens: expected a non-empty 1-D"):
            decoder.score(bad, decoder.prefill(inputs).cache)
