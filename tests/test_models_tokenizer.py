"""The scale model's byte-fallback BPE tokenizer (deterministic merges, no <unk>, sub-word pieces, special tokens,
save/load) and the drafter/target tokenizer pairing (identity for one vocabulary, string intersection otherwise)."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdlib.models.pairing import UNMAPPED, pair_tokenizers
from sdlib.models.tokenizer import (
    BYTE_TOKENS,
    SPACE,
    SPECIAL_TOKENS,
    learn_bpe,
    load_tokenizer,
    pieces,
    save_tokenizer,
    tokens_per_word,
    train_tokenizer,
    unk_count,
    vocab_summary,
)

CORPUS = [
    "USER: <video>\nWhat are the key elements in this scene? ASSISTANT:",
    "There are two cars ahead, and a bus on the left.",
    "A red car waits at the traffic light; the light is green.",
    "The road is wet. A cyclist in green rides on the right.",
    "What is the layout of the road in the scene?",
    "The ego vehicle's lane is clear, and two trucks are parked on the right.",
] * 4
SIZE = 400  # small enough that rarer words split


def test_special_and_byte_tokens_have_fixed_ids():
    tok = train_tokenizer(CORPUS, SIZE)
    assert [tok.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS] == list(range(7))
    assert [tok.convert_tokens_to_ids(b) for b in BYTE_TOKENS] == list(range(7, 7 + 256))
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert (tok.image_token, tok.video_token, tok.event_token) == ("<image>", "<video>", "<event>")
    assert len(tok) == SIZE and vocab_summary(tok)["merges"] > 0
    toks = tok.convert_ids_to_tokens(tok("a <video><video> b <event>\n")["input_ids"])
    # <s> prepended; specials are single tokens even when adjacent; a newline falls back to its byte, as in Llama
    assert toks[0] == "<s>" and toks.count("<video>") == 2 and "<event>" in toks and toks[-1] == "<0x0A>"


def test_never_unk_and_round_trips_any_text():
    tok = train_tokenizer(CORPUS, SIZE)
    texts = CORPUS + ["Zürich, 7 °C: a purple ☃ crosses!\nNew line.", "QQQ xyz 123", "tab\there"]
    assert unk_count(tok, texts) == 0
    for text in texts:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text.replace("<video>", "")
    # characters never seen in the corpus are spelled by their UTF-8 bytes
    assert tok.convert_ids_to_tokens(tok("☃", add_special_tokens=False)["input_ids"])[-3:] == [
        "<0xE2>", "<0x98>", "<0x83>"]


def test_frequent_words_are_one_piece_and_rare_words_split():
    tok = train_tokenizer(CORPUS, SIZE)

    def enc(word):
        return tok.convert_ids_to_tokens(tok(word, add_special_tokens=False)["input_ids"])

    assert enc("the") == [SPACE + "the"]  # the most frequent word
    assert len(enc("elements")) > 1  # rarer: split into sub-word pieces
    assert "".join(enc("elements")) == SPACE + "elements"
    assert 1.0 < tokens_per_word(tok, CORPUS) < 3.0
    assert tokens_per_word(train_tokenizer(CORPUS, 600), CORPUS) < tokens_per_word(tok, CORPUS)


def test_merges_follow_the_documented_rule():
    vocab, merges = learn_bpe(["aab aab aab ab"], vocab_size=7 + 256 + 3 + 2)
    # pieces ▁aab x3 (the first gets the prepended ▁), ▁ab x1; alphabet by count: a (7), then b and ▁ (4 each),
    # tied, by spelling ("b" < "▁")
    assert list(vocab)[263:266] == ["a", "b", SPACE]
    # pair counts: (▁,a) 4, (a,a) 3, (a,b) 4: the tie of (a,b) and (▁,a) goes to the smaller spelling
    assert merges[0] == ("a", "b")
    # then: (▁,a) 3 [▁a|ab] vs (a,ab) 3 vs (▁,ab) 1: tie of (▁,a) and (a,ab) -> ("a", "ab") < ("▁", "a")
    assert merges[1] == ("a", "ab")


def test_pieces_match_the_encoder_and_only_the_first_chunk_gets_the_prefix():
    tok = train_tokenizer(CORPUS, SIZE)
    for text in CORPUS[:6] + ["USER: <video>\nWhat is it?"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        joined = "".join(t for t in tok.convert_ids_to_tokens(ids) if t not in SPECIAL_TOKENS)
        assert joined.replace("<0x0A>", "\n") == "".join(pieces(text))
    assert pieces("USER: <video>\nWhat") == [SPACE + "USER", ":", SPACE, "\n", "What"]


def test_same_corpus_gives_the_same_tokenizer_in_any_order_and_any_process():
    a = train_tokenizer(CORPUS, SIZE)
    shuffled = CORPUS[:]
    random.Random(3).shuffle(shuffled)
    assert a.backend_tokenizer.to_str() == train_tokenizer(shuffled, SIZE).backend_tokenizer.to_str()
    code = ("import json, sys; from sdlib.models.tokenizer import learn_bpe; "
            f"print(json.dumps(learn_bpe(json.loads(sys.stdin.read()), {SIZE})))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(CORPUS), capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1], env={"PYTHONHASHSEED": "123", "PATH": ""})
    vocab, merges = json.loads(out.stdout)
    ref_vocab, ref_merges = learn_bpe(CORPUS, SIZE)
    assert vocab == ref_vocab and [tuple(m) for m in merges] == ref_merges
    assert learn_bpe(CORPUS[:3], SIZE)[1] != ref_merges


def test_save_and_load_round_trip(tmp_path):
    tok = train_tokenizer(CORPUS, SIZE)
    loaded = load_tokenizer(save_tokenizer(tok, tmp_path / "tok"))
    assert loaded.get_vocab() == tok.get_vocab() and len(loaded) == len(tok)
    for text in CORPUS + ["unknown wörds <video> here"]:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.eos_token_id, loaded.video_token, loaded.event_token) == (3, "<video>", "<event>")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "missing")


def test_bad_corpora_and_sizes_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="no text"):
        learn_bpe(["", "<video>"])
    with pytest.raises(TypeError, match="corpus item 1"):
        learn_bpe(["fine", 3])
    with pytest.raises(ValueError, match="vocab_size=270"):
        learn_bpe(CORPUS, 270)


# --------------------------------------------------------------------------------------------------------------------
# Pairing


def test_same_vocabulary_pairs_as_identity(tmp_path):
    tok = train_tokenizer(CORPUS, SIZE)
    other = load_tokenizer(save_tokenizer(tok, tmp_path / "t"))
    p = pair_tokenizers(tok, other, sample_texts=CORPUS)
    assert p.identical
    assert torch.equal(p.draft_to_target, torch.arange(len(tok)))
    assert torch.equal(p.target_to_draft, torch.arange(len(tok)))
    assert p.vocab_coverage == 1.0 and p.text_coverage == 1.0
    assert p.n_sample_tokens == sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in CORPUS)


def test_same_pieces_with_other_ids_map_fully_but_not_as_identity():
    drafter = train_tokenizer(CORPUS, SIZE)
    # more of two words shifts the merge order (and so the ids) but, with room for every piece, not the pieces
    target = train_tokenizer(CORPUS + ["right right right right road road road road"], SIZE + 200)
    p = pair_tokenizers(drafter, target)
    assert not p.identical
    shared = set(drafter.get_vocab()) & set(target.get_vocab())
    assert p.vocab_coverage == pytest.approx(len(shared) / len(drafter))
    ids = torch.tensor([drafter.convert_tokens_to_ids(t) for t in sorted(shared)])
    assert drafter.convert_ids_to_tokens(ids.tolist()) == target.convert_ids_to_tokens(p.to_target(ids).tolist())
    assert torch.equal(p.to_draft(p.to_target(ids)), ids)


def test_different_vocabularies_map_their_string_intersection():
    drafter = train_tokenizer(["the red car stops", "a bus turns left"] * 3, 7 + 256 + 70)
    target = train_tokenizer(["the blue car stops", "a truck turns right"] * 3, 7 + 256 + 70)
    p = pair_tokenizers(drafter, target, sample_texts=["the red bus stops", "a car"])
    d_vocab, t_vocab = drafter.get_vocab(), target.get_vocab()
    shared = set(d_vocab) & set(t_vocab)
    assert not p.identical and SPACE + "car" in shared and SPACE + "red" not in t_vocab
    assert p.vocab_coverage == pytest.approx(len(shared) / len(d_vocab))
    for token, d_id in d_vocab.items():
        t_id = int(p.draft_to_target[d_id])
        if token in shared:
            assert target.convert_ids_to_tokens(t_id) == token
            assert int(p.target_to_draft[t_id]) == d_id
        else:
            assert t_id == UNMAPPED
    sample = [drafter(t, add_special_tokens=False)["input_ids"] for t in ["the red bus stops", "a car"]]
    flat = [i for ids in sample for i in ids]
    mapped = sum(drafter.convert_ids_to_tokens(i) in shared for i in flat)
    assert p.n_sample_tokens == len(flat) and p.text_coverage == pytest.approx(mapped / len(flat)) and mapped < len(flat)
    assert p.summary()["mapped"] == len(shared)
    with pytest.raises(ValueError, match="drafter vocabulary"):
        p.to_target(torch.tensor([len(drafter)]))
