"""Reading facts from answers, scoring answers by them, and turning agreement vectors into accepted lengths
(sdlib.models.fact_words, sdlib.models.quality): checked on sentences written as the world writes them."""
from collections import Counter

import numpy as np
import pytest

from sdlib.models import quality
from sdlib.models.fact_words import answer_facts, tag_words, words_of
from sdlib.models.tokenizer import train_tokenizer


def facts(text):
    return sorted(answer_facts(text).elements())


def test_road_users_colours_counts_and_motion():
    text = ("In total I can see three passenger cars. A green passenger car is parked at the right kerb. "
            "A red passenger car stands still ahead in our lane.")
    assert facts(text) == sorted([("count", "3"), ("object", "car"), ("colour", "green"), ("object", "car"),
                                  ("motion", "parked"), ("colour", "red"), ("object", "car"),
                                  ("motion", "stopped"), ("layout", "lane")])


def test_a_colour_is_a_light_state_only_when_it_belongs_to_no_road_user():
    assert facts("The light turns green, so traffic may start to move.") == [("light", "green")]
    assert ("colour", "green") in answer_facts("A person wearing green stands on the right sidewalk.")
    assert ("light", "red") not in answer_facts("A red bus is parked on the right side of the road.")


def test_cyclists_layout_statics_and_setting():
    text = ("This is a city street after dark. The road has three lanes: two in our direction and one for oncoming "
            "traffic. A person on a bicycle wearing black is riding along the right edge. There are trees and "
            "street lamps.")
    f = answer_facts(text)
    assert f[("object", "bicycle")] == 1 and f[("object", "pedestrian")] == 0  # a person on a bicycle is a cyclist
    assert f[("setting", "city")] == 1 and f[("setting", "dark")] == 1
    assert f[("static", "tree")] == 1 and f[("static", "streetlamp")] == 1
    assert f[("layout", "lanes")] == 1 and f[("count", "3")] == 0  # "three lanes" is layout, not a count
    assert f[("colour", "black")] == 1 and f[("motion", "riding")] == 1


def test_template_words_carry_no_fact():
    words = words_of("The view is of a street, seen from a car.")
    tags = tag_words(words)
    assert [w for w, t in zip(words, tags) if t is not None] == ["car"]


def test_fact_scores_count_a_multiset():
    ref = "Two cars are parked. A red car is waiting."
    assert quality.fact_scores(ref, ref)["recall"] == 1.0 and quality.fact_scores(ref, ref)["exact"] == 1.0
    s = quality.fact_scores("A red car is waiting.", ref)
    # reference: count 2, car, parked, red, car, stopped (6); generated: red, car, stopped (3), all in the reference
    assert s["recall"] == pytest.approx(3 / 6) and s["precision"] == 1.0 and s["exact"] == 0.0
    assert s["recall_colour"] == 1.0 and s["recall_count"] == 0.0 and np.isnan(s["precision_count"])
    wrong = quality.fact_scores("A blue bus is waiting.", ref)
    assert wrong["precision"] == pytest.approx(1 / 3)  # only "stopped" is right


def test_rgb_only_facts_are_what_events_do_not_state():
    rgb = "A red car is parked. There are buildings."
    events = "A car is parked."
    assert quality.rgb_only_facts(rgb, events) == Counter({("colour", "red"): 1, ("static", "building"): 1})


def test_round_accepts_follow_greedy_verification():
    match = [True, True, False, True, True, True, True, False]
    # k = 2: accept 2 (+1 own) -> starts at 3: accept 2 (+1) -> starts at 6: accept 1 (+1 at the mismatch... end)
    assert quality.round_accepts(match, 2) == [2, 2, 1]
    assert quality.round_accepts(match, 8) == [2, 4]
    assert quality.round_accepts([False, False], 4) == [0, 0]
    stats = quality.accept_length_stats([match], ks=(2,))[2]
    assert stats["histogram"] == [0, 1, 2] and stats["tokens_per_forward"] == pytest.approx(1 + 5 / 3)
    with pytest.raises(ValueError, match="draft length"):
        quality.round_accepts(match, 0)


def test_repeated_trigrams_are_found():
    assert quality.repeats_trigram("one passenger car, one passenger car")
    assert not quality.repeats_trigram("A red car is parked. A red bus waits.")


def test_token_fact_mask_marks_the_tokens_of_fact_words():
    text = "A red car is waiting near the buildings."
    tok = train_tokenizer([text, "the the the a a"], vocab_size=300)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    mask = quality.token_fact_mask(tok, ids)
    fact_text = "".join(tok.decode([i]) for i, m in zip(ids, mask) if m).replace(" ", "")
    assert fact_text == "redcarwaitingbuildings"


def test_a_stored_evaluation_comes_back_identical_and_is_not_recomputed(tmp_path):
    import pandas as pd

    table = pd.DataFrame({"clip_id": ["a", "b"], "question": [0, 3], "target_recall": [0.5, float("nan")],
                          "target_repeats": [True, False], "target_answer": ["A red car.", "Two buses."]})
    ev = quality.PairEvaluation(table, [np.array([True, False, True]), np.array([False])],
                                [np.array([False, True, True]), np.array([True])])
    calls = []

    def compute():
        calls.append(1)
        return ev

    path = tmp_path / "evaluation-x.json"
    first, reused_first = quality.cached_evaluation(path, compute)
    again, reused_again = quality.cached_evaluation(path, compute)
    assert (reused_first, reused_again) == (False, True) and len(calls) == 1
    pd.testing.assert_frame_equal(again.table, table)
    assert all(np.array_equal(a, b) and a.dtype == bool for a, b in zip(again.match, ev.match))
    assert all(np.array_equal(a, b) for a, b in zip(again.fact_token, ev.fact_token))
    assert not list(tmp_path.glob("*.tmp"))
