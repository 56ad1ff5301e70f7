"""Tokenizer pairing when the two tokenizers differ in their added tokens and the LM heads differ from the tokenizers
(Video-LLaVA-7B-hf: 32,064 head rows for 32,000 pieces + <image> <video> <pad>; EventGPT: + <ev_patch>)."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from sdlib.models.pairing import UNMAPPED, pair_tokenizers

WORDS = ["<unk>", "<s>", "</s>", "the", "red", "car", "stops", "a", "bus", "turns", "left"]  # ids 0..10


def word_tokenizer(added: list[str] = ()) -> PreTrainedTokenizerFast:
    """The shared base (ids 0..10) plus ``added`` special tokens from id 11 on, in order."""
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if added:
        tok.add_tokens(list(added), special_tokens=True)
    return tok


def test_padded_target_head_and_different_added_tokens():
    drafter = word_tokenizer(["<ev_patch>"])  # id 11
    target = word_tokenizer(["<image>", "<video>", "<pad>"])  # ids 11, 12, 13
    p = pair_tokenizers(drafter, target, ["the red car", "a bus <ev_patch>"], drafter_rows=12, target_rows=64)
    assert not p.identical
    assert p.draft_to_target.shape == (12,) and p.target_to_draft.shape == (64,)
    assert torch.equal(p.draft_to_target[:11], torch.arange(11)) and int(p.draft_to_target[11]) == UNMAPPED
    assert torch.equal(p.target_to_draft[:11], torch.arange(11)) and (p.target_to_draft[11:] == UNMAPPED).all()
    # every id either head can produce translates, padding rows to UNMAPPED; past the head is a caller's bug
    assert p.to_draft(torch.tensor([3, 12, 40, 63])).tolist() == [3, UNMAPPED, UNMAPPED, UNMAPPED]
    with pytest.raises(ValueError, match=r"target_ids: ids must lie in \[0, 64\)"):
        p.to_draft(torch.tensor([64]))
    assert p.vocab_coverage == pytest.approx(11 / 12)
    assert p.n_sample_tokens == 6 and p.text_coverage == pytest.approx(5 / 6)  # <ev_patch> is one unmapped token
    s = p.summary()
    assert (s["drafter_tokens"], s["drafter_rows"], s["target_tokens"], s["target_rows"], s["mapped"]) == (
        12, 12, 14, 64, 11)


def test_the_same_added_token_at_different_ids_is_mapped_by_its_string():
    drafter = word_tokenizer(["<ev_patch>", "<pad>"])  # <pad> = 12
    target = word_tokenizer(["<image>", "<video>", "<pad>"])  # <pad> = 13
    p = pair_tokenizers(drafter, target, drafter_rows=13, target_rows=64)
    assert int(p.draft_to_target[12]) == 13 and int(p.target_to_draft[13]) == 12
    assert int(p.draft_to_target[11]) == UNMAPPED and int(p.target_to_draft[11]) == UNMAPPED


def test_a_token_without_a_row_is_never_mapped():
    # the drafter's tokenizer has <pad> (id 12) but its head stops at 12 rows; the target's head stops before <pad>
    drafter = word_tokenizer(["<ev_patch>", "<pad>"])
    target = word_tokenizer(["<image>", "<video>", "<pad>"])
    p = pair_tokenizers(drafter, target, drafter_rows=12, target_rows=13)
    assert p.draft_to_target.shape == (13,)  # spans the tokenizer, so a tokenized <pad> translates without error
    assert int(p.draft_to_target[12]) == UNMAPPED and int(p.target_to_draft[12]) == UNMAPPED
    p_full = pair_tokenizers(drafter, target, drafter_rows=13, target_rows=14)
    assert int(p_full.draft_to_target[12]) == 13


def test_identical_tokenizers_with_a_padded_head_never_propose_padding():
    tok = word_tokenizer(["<image>", "<video>"])
    p = pair_tokenizers(tok, word_tokenizer(["<image>", "<video>"]), drafter_rows=16, target_rows=13)
    assert p.identical
    assert torch.equal(p.draft_to_target[:13], torch.arange(13)) and (p.draft_to_target[13:] == UNMAPPED).all()
    assert p.proposable.tolist() == [True] * 13 + [False] * 3
    logits = torch.zeros(3, 16)
    logits[0, 15] = 9.0  # a padding row wins unrestricted
    logits[0, 4] = 1.0
    logits[1, 2] = 3.0
    logits[2, :13] = float("-inf")  # nothing proposable scores: the argmax lands on an id that maps nowhere
    masked = p.mask_unproposable(logits)
    assert torch.isinf(masked[:, 13:]).all() and torch.equal(masked[:, :13], logits[:, :13])
    draft_ids, target_ids = p.greedy_draft(logits)
    assert draft_ids.tolist()[:2] == [4, 2] and target_ids.tolist()[:2] == [4, 2]
    assert int(target_ids[2]) == UNMAPPED  # a caller stops drafting there
    with pytest.raises(ValueError, match="drafter_logits: 17 columns"):
        p.mask_unproposable(torch.zeros(17))


def test_rows_must_be_positive():
    tok = word_tokenizer()
    with pytest.raises(ValueError, match=r"target_rows=0: expected the number of rows"):
        pair_tokenizers(tok, tok, target_rows=0)
