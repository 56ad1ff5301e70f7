"""The facts an answer states, read from its words (used to label training clips and to score answers).

An answer's facts are its words that carry scene content, each tagged with its kind:

========  ===============================================================  ==========================
kind      words                                                            canonical value
========  ===============================================================  ==========================
object    road-user nouns: car, passenger car, lorry, bus, cyclist, ...     the road-user kind
colour    paint and clothing colours (``a red car``, ``wearing green``)     the colour
count     number words before a road user, a static object or ``more``      the number
light     the traffic light's state (``turns amber``, ``from red to``)      the state
motion    what a road user (or the ego car) does: parked, crossing, ...    one of 9 motion classes
static    buildings, trees, poles, street lamps                             the kind
layout    lanes, two-way, dashed line, intersection, zebra crossing, ...   the word
setting   time of day and surroundings: night, dusk, suburban, ...          the word
========  ===============================================================  ==========================

A colour word is a light state when it is not a vehicle's or a person's colour (not before a road-user noun, not
after ``in``/``wearing``/``dressed``), e.g. ``the light is green``.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Sequence

import numpy as np

FACT_KINDS: tuple[str, ...] = ("object", "colour", "count", "light", "motion", "static", "layout", "setting")
REPORTED_KINDS: tuple[str, ...] = ("object", "colour", "count", "light", "motion", "static")  # the six

WORD_RE = re.compile(r"[A-Za-z0-9]+(?:'[a-z]+)?|[^\sA-Za-z0-9]")
_NUMBER_WORDS = {"no": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
                 "eight": "8", "nine": "9", "ten": "10"}
_OBJECTS = {"car": "car", "cars": "car", "truck": "truck", "trucks": "truck", "lorry": "truck", "lorries": "truck",
            "bus": "bus", "buses": "bus", "cyclist": "bicycle", "cyclists": "bicycle", "bicycle": "bicycle",
            "bicycles": "bicycle", "pedestrian": "pedestrian", "pedestrians": "pedestrian", "person": "pedestrian",
            "people": "pedestrian", "vehicle": "vehicle", "vehicles": "vehicle"}
_NOUN_MODIFIERS = {"passenger"}  # "passenger car": tagged with the noun, no fact of its own
_COLOURS = {"white", "silver", "grey", "black", "red", "blue", "green", "yellow", "orange", "brown", "amber"}
_LIGHT_STATES = {"red", "amber", "green"}
_COLOUR_CUES = {"in", "wearing", "dressed"}
_MOTION = {"parked": "parked", "stopped": "stopped", "waiting": "stopped", "stationary": "stopped",
           "still": "stopped", "crossing": "crossing", "crosses": "crossing", "cross": "crossing",
           "stepping": "crossing", "walking": "walking", "walks": "walking", "strolling": "walking",
           "walk": "walking", "standing": "standing", "stands": "standing", "riding": "riding",
           "rides": "riding", "cycling": "riding", "coming": "oncoming", "approaches": "oncoming",
           "approaching": "oncoming", "towards": "oncoming", "oncoming": "oncoming", "away": "away",
           "travels": "moving", "driving": "moving", "moving": "moving", "drives": "moving", "flowing": "moving",
           "pass": "moving"}
_STATICS = {"building": "building", "buildings": "building", "tree": "tree", "trees": "tree", "pole": "pole",
            "poles": "pole", "streetlamp": "streetlamp", "streetlamps": "streetlamp", "lamps": "streetlamp"}
_LAYOUT = {"lane", "lanes", "way", "dashed", "solid", "double", "intersection", "zebra", "crosswalk", "straight",
           "curves", "bends", "bend", "curve"}
_SETTING = {"day", "daylight", "dusk", "twilight", "evening", "night", "dark", "darkness", "city", "urban",
            "suburban", "town"}


def words_of(text: str) -> list[str]:
    """Words and punctuation marks of ``text`` (the unit facts are tagged on)."""
    return WORD_RE.findall(text)


def tag_words(words: Sequence[str]) -> list[tuple[str, str | None] | None]:
    """Per word: ``(kind, value)`` for a fact word (value None for a word that is part of a fact but adds none,
    e.g. ``passenger`` in ``passenger car``), or None for a template word."""
    lw = [w.lower() for w in words]
    n = len(lw)
    tags: list[tuple[str, str | None] | None] = [None] * n

    def noun_at(j: int) -> bool:
        return 0 <= j < n and (lw[j] in _OBJECTS or lw[j] in _NOUN_MODIFIERS or lw[j] in _STATICS
                               or lw[j] == "street")

    for i, w in enumerate(lw):
        nxt = lw[i + 1] if i + 1 < n else ""
        prv = lw[i - 1] if i else ""
        if w in _OBJECTS:
            # "person on a bicycle" / "people on bicycles" is a cyclist: the bicycle word carries the fact
            if w in ("person", "people") and nxt == "on" and i + 2 < n and lw[i + 2] in ("a", "bicycles"):
                tags[i] = ("object", None)
            else:
                tags[i] = ("object", _OBJECTS[w])
        elif w in _NOUN_MODIFIERS and i + 1 < n and lw[i + 1] in _OBJECTS:
            tags[i] = ("object", None)
        elif w == "street" and nxt in ("lamp", "lamps"):
            tags[i] = ("static", None)
        elif w in ("lamp", "lamps") and prv == "street":
            tags[i] = ("static", "streetlamp")
        elif w in _STATICS:
            tags[i] = ("static", _STATICS[w])
        elif w == "dark" and nxt in _COLOURS:
            tags[i] = ("colour", None)
        elif w in _COLOURS:
            vehicle_colour = noun_at(i + 1) or prv in _COLOUR_CUES or (prv == "dark" and noun_at(i + 1))
            value = f"dark {w}" if prv == "dark" else w
            if not vehicle_colour and w in _LIGHT_STATES:
                tags[i] = ("light", w)
            else:
                tags[i] = ("colour", value)
        elif w in _NUMBER_WORDS:
            if nxt in ("-", "lane", "lanes", "way") or (nxt == "-" and i + 2 < n):
                tags[i] = ("layout", _NUMBER_WORDS[w])
            elif noun_at(i + 1) or nxt == "more" or (i + 2 < n and nxt in _COLOURS and noun_at(i + 2)):
                tags[i] = ("count", _NUMBER_WORDS[w])
        elif w == "crossing" and prv in ("zebra", "pedestrian"):
            tags[i] = ("layout", "crossing")
        elif w == "crossing" and nxt == "street":
            tags[i] = ("layout", "intersection")
        elif w == "away" and prv == "further":  # "further away": a distance, not a motion
            continue
        elif w == "stands" and nxt in ("parked", "still"):  # "stands parked", "stands still": the next word says it
            tags[i] = ("motion", None)
        elif w in _MOTION:
            tags[i] = ("motion", _MOTION[w])
        elif w in _LAYOUT:
            tags[i] = ("layout", w)
        elif w in _SETTING:
            tags[i] = ("setting", w)
    return tags


def answer_facts(text: str) -> Counter:
    """Multiset of ``(kind, value)`` facts stated by an answer."""
    return Counter(t for t in tag_words(words_of(text)) if t is not None and t[1] is not None)


def token_fact_mask(tokenizer: Any, ids: Sequence[int]) -> np.ndarray:
    """Per token of ``ids``: True if it lies inside a fact word (see :func:`tag_words`), False otherwise (template
    words, punctuation, the end-of-answer token)."""
    ids = list(ids)
    prefixes = tokenizer.batch_decode([ids[: i + 1] for i in range(len(ids))], skip_special_tokens=True)
    ends = [len(t) for t in prefixes]  # character offset where each token's text ends
    text = prefixes[-1] if prefixes else ""
    spans = [(m.start(), m.end(), m.group()) for m in WORD_RE.finditer(text)]
    tags = tag_words([s[2] for s in spans])
    fact_chars = np.zeros(len(text) + 1, dtype=bool)
    for (a, b, _), tag in zip(spans, tags):
        if tag is not None:
            fact_chars[a:b] = True
    out = np.zeros(len(ids), dtype=bool)
    start = 0
    for i, end in enumerate(ends):
        out[i] = bool(fact_chars[start:end].any())
        start = end
    return out
