"""The scale model's word-level tokenizer (deterministic vocabulary, special tokens, save/load) and the drafter/target
tokenizer pairing (identity for one vocabulary, string intersection and coverage for two)."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdlib.models.pairing import UNMAPPED, pair_tokenizers
from sdlib.models.tokenizer import (
    SPECIAL_TOKENS,
    build_backend,
    build_vocab,
    load_tokenizer,
    save_tokenizer,
    split_words,
    train_tokenizer,
    unk_rate,
)

CORPUS = [
    "USER: <video>\nWhat are the key elements in this scene? ASSISTANT:",
    "There are two cars ahead, and a bus on the left.",
    "A red car waits at the traffic light; the light is green.",
    "The road is wet. A cyclist in green rides on the right.",
    "What is the layout of the road in the scene?",
    "The ego vehicle's lane is clear, and two trucks are parked on the right.",
]


def test_special_tokens_have_fixed_ids_and_named_attributes():
    tok = train_tokenizer(CORPUS)
    assert [tok.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS] == list(range(7))
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert (tok.image_token, tok.video_token, tok.event_token) == ("<image>", "<video>", "<event>")
    ids = tok("a <video><video> b <event>\n")["input_ids"]
    # <s> prepended; specials are single tokens even when adjacent; the newline is a token
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "a", "<video>", "<video>", "<unk>", "<event>", "\n"]


def test_vocab_orders_words_by_count_then_spelling():
    vocab = build_vocab(["b a b c", "c b z"])
    words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])][7:]
    assert words == ["b", "c", "a", "z"]  # b x3, c x2, then a and z (x1) alphabetically
    assert len(build_vocab(["b a b c", "c b z"], min_frequency=2)) == 7 + 2
    assert len(build_vocab(["b a b c", "c b z"], max_size=9)) == 9


def test_same_corpus_gives_the_same_vocab_in_any_order_and_any_process():
    a = train_tokenizer(CORPUS)
    shuffled = CORPUS[:]
    random.Random(3).shuffle(shuffled)
    b = train_tokenizer(shuffled)
    assert a.get_vocab() == b.get_vocab()
    assert build_backend(build_vocab(CORPUS)).to_str() == build_backend(build_vocab(shuffled)).to_str()
    # a fresh interpreter (its own hash seed) builds the same table
    code = (
        "import json, sys; from sdlib.models.tokenizer import build_vocab; "
        "print(json.dumps(build_vocab(json.loads(sys.stdin.read()))))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(CORPUS), capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1], env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert json.loads(out.stdout) == build_vocab(CORPUS)
    # a different corpus gives a different table
    assert build_vocab(CORPUS[:3]) != build_vocab(CORPUS)


def test_split_rule_matches_the_worlds_token_count():
    assert split_words("The ego vehicle's lane is clear, isn't it?") == [
        "The", "ego", "vehicle's", "lane", "is", "clear", ",", "isn't", "it", "?"]
    qa = pytest.importorskip("sdlib.world.qa")  # the world's own word counter (same rule, no newline)
    for q in qa.QUESTIONS:
        assert split_words(q) == qa.tokenize(q)


def test_decode_round_trips_sentences_and_unknown_words_count():
    tok = train_tokenizer(CORPUS)
    for text in CORPUS[1:] + ["What is it (the light)? A two-lane road: 50% wet.\nYes."]:
        ids = tok(text)["input_ids"]
        assert len(ids) == 1 + len(split_words(text))  # one token per word or mark, plus <s>
        if "(" not in text:  # the last text has words outside the vocabulary
            assert tok.decode(ids, skip_special_tokens=True) == text
    spaced = tok.convert_tokens_to_string(split_words("What is it (the light)? A two-lane road: 50% wet.\nYes."))
    assert spaced == "What is it (the light)? A two-lane road: 50% wet.\nYes."
    prompt = "<s> USER: <video>\nWhat are the key elements in this scene? ASSISTANT:"
    assert tok.decode(tok(CORPUS[0])["input_ids"]) == prompt
    assert unk_rate(tok, ["two purple cars ahead"]) == pytest.approx(0.25)
    assert unk_rate(tok, CORPUS) == 0.0


def test_save_and_load_round_trip(tmp_path):
    tok = train_tokenizer(CORPUS)
    loaded = load_tokenizer(save_tokenizer(tok, tmp_path / "tok"))
    assert loaded.get_vocab() == tok.get_vocab() and len(loaded) == len(tok)
    for text in CORPUS + ["unknown words <video> here"]:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.eos_token_id, loaded.video_token, loaded.event_token) == (3, "<video>", "<event>")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "missing")


def test_bad_corpora_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="no words"):
        build_vocab(["", "   ", "<video>"])
    with pytest.raises(TypeError, match="corpus item 1"):
        build_vocab(["fine", 3])
    with pytest.raises(ValueError, match="min_frequency"):
        build_vocab(CORPUS, min_frequency=0)


# --------------------------------------------------------------------------------------------------------------------
# Pairing


def test_same_vocabulary_pairs_as_identity(tmp_path):
    tok = train_tokenizer(CORPUS)
    other = load_tokenizer(save_tokenizer(tok, tmp_path / "t"))
    p = pair_tokenizers(tok, other, sample_texts=CORPUS)
    assert p.identical
    assert torch.equal(p.draft_to_target, torch.arange(len(tok)))
    assert torch.equal(p.target_to_draft, torch.arange(len(tok)))
    assert p.vocab_coverage == 1.0 and p.text_coverage == 1.0
    assert p.n_sample_tokens == sum(len(split_words(t)) + t.count("<video>") for t in CORPUS)


def test_same_words_with_other_ids_map_fully_but_not_as_identity():
    drafter = train_tokenizer(CORPUS)
    target = train_tokenizer(CORPUS + ["right right right right road road road road"])  # shifts frequency ranks
    p = pair_tokenizers(drafter, target)
    assert not p.identical and p.vocab_coverage == 1.0
    assert not torch.equal(p.draft_to_target, torch.arange(len(drafter)))
    ids = torch.arange(len(drafter))
    assert drafter.convert_ids_to_tokens(ids.tolist()) == target.convert_ids_to_tokens(p.to_target(ids).tolist())
    assert torch.equal(p.to_draft(p.to_target(ids)), ids)


def test_different_vocabularies_map_their_string_intersection():
    drafter = train_tokenizer(["the red car stops", "a bus turns left"])
    target = train_tokenizer(["the blue car stops", "a truck turns right"])
    p = pair_tokenizers(drafter, target, sample_texts=["the red bus stops", "a car"])
    d_words = {"the", "red", "car", "stops", "a", "bus", "turns", "left"}
    shared = {"the", "car", "stops", "a", "turns"}
    assert not p.identical
    assert p.vocab_coverage == pytest.approx((7 + len(shared)) / (7 + len(d_words)))
    for token, d_id in drafter.get_vocab().items():
        t_id = int(p.draft_to_target[d_id])
        if token in shared or token in SPECIAL_TOKENS:
            assert target.convert_ids_to_tokens(t_id) == token
            assert int(p.target_to_draft[t_id]) == d_id
        else:
            assert t_id == UNMAPPED
    # sample: the red bus stops | a car -> 6 drafter tokens, "red" and "bus" unmapped
    assert p.n_sample_tokens == 6 and p.text_coverage == pytest.approx(4 / 6)
    assert p.summary()["mapped"] == 7 + len(shared)
    with pytest.raises(ValueError, match="drafter vocabulary"):
        p.to_target(torch.tensor([len(drafter)]))
