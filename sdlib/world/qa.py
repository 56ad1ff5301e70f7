"""Questions and grounded answers.

The 10 questions are the DSEC questions the original research used, verbatim and in its order. An answer is written
from one view's `Observation` (see `facts`): "rgb" is what the target, watching 8 RGB frames, should say; "events" is
what can be known from the event stream. Both views of one (scene, question) share a wording plan drawn from one rng,
so their texts differ only where the sensors' knowledge differs: colour, static objects while the ego stands still,
the traffic light's state, night-time visibility.

Answers are 30-80 tokens (words and punctuation marks, `tokenize`), several sentences, with wording, sentence order
and the order objects are mentioned in varying from scene to scene.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sdlib.base.questions import QUESTION_TYPES, QUESTIONS

from .facts import VIEWS, ObjectFact, Observation, Viewing, observe
from .scene import Scene

MIN_TOKENS = 30
MAX_TOKENS = 80

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[a-z]+)?|[^\sA-Za-z0-9]")
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_VEHICLE_KINDS = ("car", "truck", "bus", "bicycle")


def tokenize(text: str) -> list[str]:
    """Words and punctuation marks: the token-count proxy for answer lengths and the unit of `edit_ratio`."""
    return _TOKEN.findall(text)


# --------------------------------------------------------------------------------------------------------------------
# Wording plan: every choice is a deterministic function of (plan seed, choice name), so two views asking the same
# question make the same choice.


class _Plan:
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def u(self, key: str) -> float:
        return zlib.crc32(f"{self.seed}|{key}".encode()) / 2**32

    def pick(self, key: str, options: tuple | list):
        return options[int(self.u(key) * len(options))]

    def chance(self, key: str, p: float) -> bool:
        return self.u(key) < p

    def order(self, key: str, items: list) -> list:
        return sorted(items, key=lambda it: self.u(f"{key}|{it}"))


def _an(word: str) -> str:
    """The indefinite article by sound: 'an orange car', 'a one-lane road', 'an eight-lane road'."""
    w = word.lower()
    return "an" if w[:1] in "aeiou" and not w.startswith(("one", "uni", "use")) else "a"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str], plan: _Plan, key: str, clauses: bool = False) -> str:
    """'a, b and c' (noun phrases may also end with 'as well as c'; clauses always with 'and')."""
    if len(items) <= 1:
        return "".join(items)
    conj = "and" if clauses else plan.pick(f"{key}|conj", ("and", "and", "as well as"))
    return ", ".join(items[:-1]) + f" {conj} " + items[-1]


def _there_be(items_counts: list[int]) -> str:
    """'is' or 'are' for 'There ... x, y': agreement with the first item."""
    return "is" if items_counts and items_counts[0] == 1 else "are"


def _count(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


_NOUNS = {
    "car": (("car", "cars"), ("passenger car", "passenger cars")),
    "truck": (("truck", "trucks"), ("lorry", "lorries")),
    "bus": (("bus", "buses"),),
    "bicycle": (("cyclist", "cyclists"), ("person on a bicycle", "people on bicycles")),
    "pedestrian": (("pedestrian", "pedestrians"), ("person on foot", "people on foot")),
}


def _noun(kind: str, plan: _Plan, plural: bool = False) -> str:
    pair = plan.pick(f"noun|{kind}", _NOUNS[kind])
    return pair[1] if plural else pair[0]


def _np(o: ObjectFact, plan: _Plan) -> str:
    """'a red car', 'a cyclist in green', or without colour when the view cannot tell it."""
    noun = _noun(o.kind, plan)
    if not o.colour:
        return f"{_an(noun)} {noun}"
    if o.kind in ("pedestrian", "bicycle"):  # the colour is the clothing's
        wear = plan.pick(f"wear|{o.uid}", ("in {c}", "wearing {c}", "dressed in {c}")).replace("{c}", o.colour)
        return f"{_an(noun)} {noun} {wear}"
    return f"{_an(o.colour)} {o.colour} {noun}"


def _clause(o: ObjectFact, plan: _Plan, view: str, detail: bool) -> str:
    """'a red car is driving ahead in our lane, close to us'."""
    np_ = _np(o, plan)
    k = f"clause|{o.uid}"
    place = o.place
    m = o.motion
    if m == "parked":
        verb = plan.pick(k, ("is parked {p}", "stands parked {p}", "is parked {p}"))
        place = plan.pick(k + "|pl", ("at the right kerb", "on the right side of the road"))
    elif m == "stopped":
        verb = plan.pick(k, ("is stopped {p}", "is waiting {p}", "stands still {p}"))
    elif m in ("crossing to the right", "crossing to the left"):
        direction = "from left to right" if m.endswith("right") else "from right to left"
        if o.kind != "pedestrian":
            verb = plan.pick(k, ("is crossing the intersection ahead {d}", "crosses the intersection ahead {d}"))
        elif place == "on the zebra crossing":
            verb = plan.pick(k, ("is crossing the road on the zebra crossing {d}", "crosses at the zebra crossing {d}"))
        else:
            verb = plan.pick(k, ("is about to cross the road {d}", "is stepping onto the road {d}"))
        verb = verb.replace("{d}", direction)
    elif m == "walking":
        verb = plan.pick(k, ("is walking {p}", "walks {p}", "is strolling {p}"))
    elif m == "standing":
        verb = plan.pick(k, ("is standing {p}", "stands {p}", "is waiting {p}"))
    elif o.kind == "bicycle":
        verb = plan.pick(k, ("is riding {p}", "rides {p}", "is cycling {p}"))
    elif m == "oncoming":
        verb = plan.pick(k, ("is coming towards us {p}", "approaches {p}", "is {p}, heading towards us",
                             "drives towards us {p}"))
    else:  # moving away
        verb = plan.pick(k, ("is driving {p}", "is moving away from us {p}", "is {p}, moving in our direction",
                             "travels {p}"))
    text = f"{np_} {verb.replace('{p}', place)}"
    if detail:
        if o.distance == "close" and plan.chance(k + "|dist", 0.7):
            text += plan.pick(k + "|d", (", close to us", ", quite near", ", just ahead"))
        elif o.distance == "far" and plan.chance(k + "|dist", 0.7):
            text += plan.pick(k + "|d", (", far ahead", ", in the distance", ", some way off"))
        if o.lights_on and view == "rgb" and plan.chance(k + "|lights", 0.6):
            text += plan.pick(k + "|l", (", with its lights on", ", with its lamps lit"))
    if o.partly_hidden:
        text += plan.pick(k + "|hid", (", partly hidden", ", partly occluded", ", only partly visible"))
    return text


# --------------------------------------------------------------------------------------------------------------------
# Topics: each returns (sentence or "", facts stated). A fact is a hashable tuple.

_Fact = tuple
_Out = tuple[str, set]


@dataclass
class _Ctx:
    obs: Observation
    plan: _Plan
    view: str
    max_items: int

    @property
    def vehicles(self) -> list[ObjectFact]:
        return self._ordered([o for o in self.obs.objects if o.kind in _VEHICLE_KINDS])

    @property
    def people(self) -> list[ObjectFact]:
        return self._ordered([o for o in self.obs.objects if o.kind == "pedestrian"])

    def _ordered(self, objs: list[ObjectFact]) -> list[ObjectFact]:
        # prominence: near objects first, with a scene-dependent jitter so the order is not fixed
        return sorted(objs, key=lambda o: o.z_m * (0.5 + self.plan.u(f"order|{o.uid}")))


def _object_facts(o: ObjectFact) -> set[_Fact]:
    f = {("object", o.uid, o.kind), ("place", o.uid, o.place), ("motion", o.uid, o.motion)}
    if o.colour:
        f.add(("colour", o.uid, o.colour))
    return f


def _t_setting(c: _Ctx) -> _Out:
    obs, p = c.obs, c.plan
    env = {"urban": ("a city street", "an urban street", "a street in town"),
           "suburban": ("a suburban road", "a road on the edge of town", "a quiet suburban street")}
    time = {"day": ("in daylight", "during the day", "on a clear day"),
            "dusk": ("at dusk", "in the evening twilight", "as daylight fades"),
            "night": ("at night", "after dark", "in darkness")}
    tpl = p.pick("set|tpl", ("This is {e}{t}.", "The scene shows {e}{t}.", "The view is of {e}{t}, seen from a car."))
    if obs.environment is None:  # events, ego standing still: the surroundings are silent
        return p.pick("set|none", ("The event stream shows a road scene, but little of the surroundings.",
                                   "The events reveal a road scene with almost no detail of the surroundings.")), \
            {("environment", None)}
    e = p.pick("set|env", env[obs.environment])
    if obs.illumination is None:  # events: no absolute brightness
        s = tpl.replace("{e}", e).replace("{t}", "")
        if p.chance("set|tod", 0.5):
            s += " The time of day cannot be judged from events."
        return s, {("environment", obs.environment)}
    s = tpl.replace("{e}", e).replace("{t}", " " + p.pick("set|time", time[obs.illumination]))
    return s, {("environment", obs.environment), ("light", obs.illumination)}


def _t_ego(c: _Ctx) -> _Out:
    p = c.plan
    if c.obs.ego_moving:
        s = p.pick("ego", ("The camera vehicle is driving forward", "We are driving along the road",
                           "The car carrying the camera is moving forward in its lane"))
        why = p.pick("ego|why", (", since the whole scene produces events", ", as edges of the road and roadside "
                                 "stream past", ", because events cover the whole view"))
    else:
        s = p.pick("ego", ("The camera vehicle is standing still", "We are stopped",
                           "The car carrying the camera is not moving"))
        why = p.pick("ego|why", (", since only moving things produce events", ", as the background stays silent",
                                 ", because events come only from moving objects"))
    if c.view == "events" and p.chance("ego|explain", 0.6):
        s += why
    return s + ".", {("ego_moving", c.obs.ego_moving)}


def _t_road(c: _Ctx) -> _Out:
    p, road = c.plan, c.obs.road
    if road is None:
        s = p.pick("road|none", ("The road layout cannot be made out, because the road and its markings do not "
                                 "change while we stand still.",
                                 "The lanes and markings are invisible in the events, since nothing static changes "
                                 "while the camera stands still."))
        lanes = {o.place for o in c.vehicles if "lane" in o.place}
        if lanes:
            s += f" Moving vehicles suggest at least {_count(len(lanes))} lane{'s' if len(lanes) > 1 else ''}."
        return s, {("road", None), ("lanes_hint", len(lanes))}
    n = road.lanes_forward + road.lanes_oncoming
    lanes = f"{_count(n)} lane{'s' if n > 1 else ''}"
    if road.lanes_oncoming == 0:
        first = p.pick("road|1", ("The road is one-way, with {l} in our direction.",
                                  "It is a one-way road with {l}.")).replace("{l}", lanes)
    else:
        first = p.pick("road|1", ("The road has {l}: {f} in our direction and {o} for oncoming traffic.",
                                  "It is a two-way road with {l}, {f} in our direction and {o} the other way."))
        first = first.replace("{l}", lanes).replace("{f}", _count(road.lanes_forward)) \
            .replace("{o}", _count(road.lanes_oncoming))
    facts: set[_Fact] = {("lanes", road.lanes_forward, road.lanes_oncoming)}
    parts = [first]
    if road.centre_line in ("solid", "dashed") and p.chance("road|cl", 0.6):
        parts.append(f"A {road.centre_line} line separates the two directions.")
        facts.add(("centre_line", road.centre_line))
    if road.curve == "straight":
        parts.append(p.pick("road|c", ("It runs straight ahead.", "The road is straight.")))
    else:
        parts.append(p.pick("road|c", ("It curves to the {d} ahead.", "The road bends to the {d}.")).replace(
            "{d}", road.curve))
    facts.add(("curve", road.curve))
    extra = []
    if road.intersection:
        extra.append(p.pick("road|i", ("an intersection ahead", "a crossing street ahead")))
        facts.add(("intersection", True))
    if road.crosswalk:
        extra.append(p.pick("road|z", ("a zebra crossing", "a pedestrian crossing")))
        facts.add(("crosswalk", True))
    if extra:
        parts.append(f"There is {_join(extra, p, 'road|x')}.")
    if c.view == "rgb" and c.obs.illumination == "night" and p.chance("road|night", 0.7):
        parts.append("Only the part lit by the headlights is clearly visible.")
    return " ".join(parts), facts


def _t_vehicles(c: _Ctx, detail: bool = True) -> _Out:
    p = c.plan
    vs = c.vehicles
    if not vs:
        s = p.pick("veh|none", ("No other vehicles are visible", "There are no other vehicles in sight"))
        return s + (" in the events." if c.view == "events" else "."), {("no", "vehicles")}
    shown = vs[:c.max_items]
    facts: set[_Fact] = set()
    sentences = []
    for i, o in enumerate(shown):
        sentences.append(_cap(_clause(o, p, c.view, detail)) + ".")
        facts |= _object_facts(o)
    rest = len(vs) - len(shown)
    if rest:
        sentences.append(f"{_cap(_count(rest))} more vehicle{'s are' if rest > 1 else ' is'} further away.")
        facts.add(("more_vehicles", rest))
    if not detail:
        return " ".join(sentences), facts
    if len(vs) > 1 and p.chance("veh|summary", 0.6):
        items, ns, _ = _kind_counts(vs, p, "veh|kinds")
        lead = p.pick("veh|lead", ("There {are} {x} in view.", "In total I can see {x}.", "The vehicles are {x}."))
        sentences.insert(0, lead.replace("{x}", _join(items, p, "veh|list")).replace("{are}", _there_be(ns)))
    return " ".join(sentences), facts


def _kind_counts(objs: list[ObjectFact], plan: _Plan, key: str) -> tuple[list[str], list[int], dict[str, int]]:
    counts: dict[str, int] = {}
    for o in objs:
        counts[o.kind] = counts.get(o.kind, 0) + 1
    kinds = plan.order(key, list(counts))
    return [f"{_count(counts[k])} {_noun(k, plan, plural=counts[k] > 1)}" for k in kinds], \
        [counts[k] for k in kinds], counts


def _t_vehicles_brief(c: _Ctx) -> _Out:
    p = c.plan
    vs = c.vehicles
    if not vs:
        return _t_vehicles(c)
    items, ns, counts = _kind_counts(vs, p, "brief|kinds")
    s = p.pick("brief|tpl", ("Traffic consists of {x}.", "There {are} {x} on the road.", "I can see {x}."))
    s = s.replace("{x}", _join(items, p, "brief|list")).replace("{are}", _there_be(ns))
    return s, {("count", k, n) for k, n in counts.items()}


def _t_highlight(c: _Ctx) -> _Out:
    """The most prominent road user, in one sentence."""
    p = c.plan
    objs = c.vehicles + c.people
    if not objs:
        return "", set()
    first = min(objs, key=lambda o: o.z_m * (0.5 + p.u(f"order|{o.uid}")))
    s = p.pick("hl|tpl", ("The most prominent is {x} {w}.", "Most noticeable is {x} {w}.",
                          "One road user stands out: {x} {w}."))
    return s.replace("{x}", _np(first, p)).replace("{w}", first.place), _object_facts(first)


def _t_people(c: _Ctx) -> _Out:
    p = c.plan
    ps = c.people
    if not ps:
        s = p.pick("ped|none", ("No pedestrians are visible", "There are no pedestrians in sight"))
        return s + (" in the events." if c.view == "events" else "."), {("no", "pedestrians")}
    facts: set[_Fact] = set()
    clauses = []
    shown = ps[:max(1, c.max_items - 1)]
    groups: dict[tuple[str, str], list[ObjectFact]] = {}
    for o in shown:  # people doing the same thing in the same place, colour unknown, are said together
        groups.setdefault((o.place, o.motion) if o.colour is None else (str(o.uid), ""), []).append(o)
    for members in groups.values():
        o = members[0]
        if len(members) > 1:
            clauses.append(_people_clause(members, p))
        else:
            text = _clause(o, p, c.view, detail=False)
            plain = _np(dataclasses.replace(o, colour=None), p)
            if clauses and text.startswith(plain + " "):  # 'a pedestrian ... and another pedestrian ...'
                text = "another" + text[len(plain.split(" ")[0]):]
            clauses.append(text)
        for m in members:
            facts |= _object_facts(m)
    rest = len(ps) - len(shown)
    s = _cap(_join(clauses, p, "ped|list", clauses=True)) + "."
    if rest:
        s += f" {_cap(_count(rest))} more {'people are' if rest > 1 else 'person is'} further away."
    return s, facts


def _people_clause(members: list[ObjectFact], plan: _Plan) -> str:
    """'two pedestrians are walking on the left sidewalk' for people sharing place and motion (no colour known)."""
    o = members[0]
    who = f"{_count(len(members))} {_noun('pedestrian', plan, plural=True)}"
    if o.motion.startswith("crossing"):
        direction = "from left to right" if o.motion.endswith("right") else "from right to left"
        what = ("are crossing the road on the zebra crossing" if o.place == "on the zebra crossing"
                else "are about to cross the road") + " " + direction
    elif o.motion == "standing":
        what = f"are standing {o.place}"
    else:
        what = plan.pick(f"group|{o.uid}", ("are walking {p}", "walk {p}")).replace("{p}", o.place)
    text = f"{who} {what}"
    if any(m.partly_hidden for m in members):
        text += ", partly hidden"
    return text


def _t_light(c: _Ctx) -> _Out:
    p, lt = c.plan, c.obs.light
    where = {"close": "just ahead", "near": "ahead", "far": "further ahead"}
    if lt is None:
        if c.view == "events":
            return p.pick("light|none", ("No traffic light change is visible in the events.",
                                         "The events show no traffic light switching.")), {("light", None)}
        return "", set()
    w = where[lt.distance]
    if lt.state_start is None:
        return p.pick("light|unk", ("There is a traffic light {w}, but its colour cannot be read from events.",
                                    "A traffic light stands {w}; events do not show which lamp is lit.")
                      ).replace("{w}", w), {("light", "present", None)}
    if lt.switched:
        if c.view == "rgb":
            s = p.pick("light|sw", ("The traffic light {w} changes from {a} to {b}.",
                                    "The traffic light {w} turns from {a} to {b} during the clip."))
        else:
            pos = {"red": "top", "amber": "middle", "green": "bottom"}
            s = p.pick("light|sw", ("The traffic light {w} changes from {a} to {b}: its {pa} lamp goes dark and "
                                    "the {pb} lamp lights up.",
                                    "The traffic light {w} turns from {a} to {b}, as the {pa} lamp switches off "
                                    "and the {pb} lamp on."))
            s = s.replace("{pa}", pos[lt.state_start]).replace("{pb}", pos[lt.state_end])
        s = s.replace("{w}", w).replace("{a}", lt.state_start).replace("{b}", lt.state_end)
        return s, {("light", lt.state_start, lt.state_end)}
    s = p.pick("light|st", ("The traffic light {w} is {a}.", "The traffic light {w} shows {a}.",
                            "There is a {a} traffic light {w}."))
    return s.replace("{w}", w).replace("{a}", lt.state_start), {("light", lt.state_start, lt.state_end)}


def _t_statics(c: _Ctx) -> _Out:
    p, obs = c.plan, c.obs
    kinds = set(obs.statics)
    if not kinds:
        return "", set()
    names = {"building": "buildings", "tree": "trees", "streetlamp": "street lamps", "pole": "poles"}
    items = [names[k] for k in p.order("stat|order", sorted(kinds))]
    if c.view == "rgb":
        s = p.pick("stat|tpl", ("{x} line the road.", "The roadside has {x}.", "Along the road there are {x}."))
        s = s.replace("{x}", _join(items, p, "stat|list"))
        if obs.lit_windows:
            s += " Some windows are lit."
    else:
        s = p.pick("stat|tpl", ("The outlines of {x} sweep past.", "Edges of {x} move through the view.",
                                "{x} show up as moving outlines."))
        s = s.replace("{x}", _join(items, p, "stat|list"))
    return _cap(s), {("static", k) for k in kinds}


def _t_caveat(c: _Ctx) -> _Out:
    p, obs = c.plan, c.obs
    if c.view == "rgb":
        s = {"day": p.pick("cav|day", ("Visibility is good, so colours are easy to tell.",
                                       "The lighting is good and colours are clear.")),
             "dusk": p.pick("cav|dusk", ("The light is fading, which makes some details harder to see.",
                                         "In the low light some details are unclear.")),
             "night": p.pick("cav|night", ("It is dark, so unlit or dark-coloured objects are hard to see.",
                                           "In the darkness, dark objects away from the headlights may be missed."))
             }[obs.illumination]
        return s, {("caveat", "rgb", obs.illumination)}
    parts = [p.pick("cav|col", ("Colours cannot be told from events.", "Event data carry no colour information."))]
    facts = {("caveat", "events", "colour")}
    if not obs.ego_moving:
        parts.append(p.pick("cav|static", ("Static objects, such as parked cars and buildings, are invisible while "
                                           "the camera stands still.",
                                           "Anything that does not move stays invisible while we are stopped.")))
        facts.add(("caveat", "events", "static"))
    if p.chance("cav|dark", 0.3):
        parts.append("Motion is captured well even in poor light.")
    return " ".join(p.order("cav|ord", parts)), facts


def _t_traffic(c: _Ctx) -> _Out:
    p = c.plan
    vs = c.vehicles
    n = len(vs)
    if n == 0:
        s = p.pick("traffic|0", ("There is no other traffic in sight", "The road is free of other traffic"))
        return s + (" in the events." if c.view == "events" else "."), {("traffic", 0)}
    level = "light" if n <= 2 else ("moderate" if n <= 4 else "heavy")
    s = p.pick("traffic|tpl", ("Traffic is {l}.", "The traffic is {l}.", "There is {l} traffic."))
    return s.replace("{l}", level), {("traffic", level)}


def _t_activity(c: _Ctx) -> _Out:
    p = c.plan
    vs, ps = c.vehicles, c.people
    moving = [o for o in vs if o.motion in ("moving away", "oncoming") or o.motion.startswith("crossing")]
    waiting = [o for o in vs if o.motion in ("stopped", "parked")]
    bits: list[str] = []
    facts: set[_Fact] = set()
    away = sum(o.motion == "moving away" for o in moving)
    towards = sum(o.motion == "oncoming" for o in moving)
    crossing = [o for o in vs if o.motion.startswith("crossing")]
    if away and towards:
        bits.append(p.pick("act|both", ("Traffic is flowing in both directions.", "Vehicles pass in both directions.")))
    elif away:
        bits.append(p.pick("act|away", ("Vehicles ahead are moving in our direction.",
                                        "The traffic ahead moves along with us." if c.obs.ego_moving else
                                        "Traffic ahead is moving away from us.")))
    elif towards:
        bits.append(p.pick("act|towards", ("Oncoming vehicles are approaching.", "Traffic is coming towards us.")))
    facts.add(("flow", away > 0, towards > 0))
    if crossing:
        bits.append(p.pick("act|cross", ("A vehicle is crossing the intersection.", "Cross traffic passes ahead.")))
        facts.add(("cross_traffic", True))
    if waiting:
        bits.append(f"{_cap(_count(len(waiting)))} vehicle{'s are' if len(waiting) > 1 else ' is'} stationary.")
        facts.add(("stationary", len(waiting)))
    crossers = [o for o in ps if o.motion.startswith("crossing")]
    walkers = [o for o in ps if o.motion == "walking"]
    if crossers:
        bits.append(p.pick("act|pedx", ("Pedestrians are crossing the road.", "People are crossing at the zebra "
                                        "crossing.")) if len(crossers) > 1 else
                    p.pick("act|pedx1", ("A pedestrian is crossing the road.", "Someone is crossing at the zebra "
                                         "crossing.")))
        facts.add(("ped_crossing", len(crossers)))
    elif walkers:
        bits.append(p.pick("act|walk", ("People are walking on the sidewalk.", "Pedestrians walk along the road."))
                    if len(walkers) > 1 else
                    p.pick("act|walk1", ("A pedestrian is walking on the sidewalk.", "Someone walks along the road.")))
        facts.add(("ped_walking", True))
    lt = c.obs.light
    if lt is not None and lt.switched:
        nxt = {"green": "so traffic may start to move", "amber": "so traffic should prepare to stop",
               "red": "so traffic has to stop"}[lt.state_end]
        bits.append(f"The light turns {lt.state_end}, {nxt}.")
        facts.add(("light", lt.state_start, lt.state_end))
    if not bits:
        bits.append(p.pick("act|quiet", ("Nothing else is moving; the scene is quiet.",
                                         "Apart from that, the scene is calm.")))
        facts.add(("quiet", True))
    return " ".join(bits), facts


def _t_inventory(c: _Ctx) -> _Out:
    p, obs = c.plan, c.obs
    items: list[str] = []
    facts: set[_Fact] = set()
    if obs.road is not None:
        n = obs.road.lanes_forward + obs.road.lanes_oncoming
        items.append(f"{_an(_count(n))} {_count(n)}-lane road")
        facts.add(("lanes_total", n))
    counts: dict[str, int] = {}
    for o in obs.objects:
        counts[o.kind] = counts.get(o.kind, 0) + 1
    for k in p.order("inv|kinds", list(counts)):
        n = counts[k]
        items.append(f"{_count(n)} {_noun(k, p, plural=n > 1)}")
        facts.add(("count", k, n))
    if obs.light is not None:
        items.append("a traffic light")
        facts.add(("light_present", True))
    names = {"building": "buildings", "tree": "trees", "streetlamp": "street lamps", "pole": "poles"}
    for k in p.order("inv|stat", list(obs.statics))[:2]:
        items.append(names[k])
        facts.add(("static", k))
    if not items:
        return p.pick("inv|none", ("Hardly anything registers in the events.",
                                   "Almost nothing in the scene produces events.")), {("empty", True)}
    lead = p.pick("inv|tpl", ("The key elements are {x}.", "The scene contains {x}.", "I can make out {x}."))
    return lead.replace("{x}", _join(items, p, "inv|list")), facts


# Topics per question: (core, extras). Extras are added (in a plan-driven order) until the answer is long enough.
_TOPICS: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    0: (("inventory", "highlight", "light"), ("setting", "ego", "people", "caveat", "statics", "traffic")),
    1: (("setting", "vehicles", "people", "light"), ("road", "statics", "caveat", "ego")),
    2: (("setting", "ego", "activity"), ("light", "caveat", "vehicles_brief", "road")),
    3: (("road", "vehicles_short", "ego"), ("statics", "light", "caveat", "traffic")),
    4: (("vehicles",), ("traffic", "ego", "caveat", "people", "light")),
    5: (("ego", "activity"), ("light", "people", "caveat", "setting", "traffic")),
    6: (("inventory", "statics"), ("vehicles_brief", "light", "caveat", "setting", "ego", "people")),
    7: (("activity", "ego"), ("people", "light", "caveat", "traffic", "setting")),
    8: (("setting", "road", "vehicles", "light"), ("people", "statics", "caveat", "ego")),
    9: (("vehicles",), ("traffic", "ego", "caveat", "people", "light")),
}
_TOPIC_FN: dict[str, Callable[[_Ctx], _Out]] = {
    "setting": _t_setting, "ego": _t_ego, "road": _t_road, "vehicles": _t_vehicles,
    "vehicles_short": lambda c: _t_vehicles(c, detail=False), "vehicles_brief": _t_vehicles_brief,
    "people": _t_people, "light": _t_light, "statics": _t_statics, "caveat": _t_caveat, "traffic": _t_traffic,
    "activity": _t_activity, "inventory": _t_inventory, "highlight": _t_highlight,
}


def _compose(obs: Observation, q_idx: int, plan: _Plan) -> tuple[str, set]:
    core, extras = _TOPICS[q_idx]
    core = list(core)
    if len(core) > 2 and plan.chance(f"q{q_idx}|swap", 0.5):
        core[1:] = plan.order(f"q{q_idx}|core", core[1:])
    extras = plan.order(f"q{q_idx}|extra", list(extras))
    for max_items in (4, 3, 2, 1):
        ctx = _Ctx(obs, plan, obs.view, max_items)
        pieces = [pc for pc in (_TOPIC_FN[t](ctx) for t in core) if pc[0]]
        lengths = [len(tokenize(pc[0])) for pc in pieces]
        if sum(lengths) > MAX_TOKENS and max_items > 1:
            continue  # list fewer objects first
        while sum(lengths) > MAX_TOKENS and len(pieces) > 1:  # then drop the longest core topic after the first
            i = 1 + int(np.argmax(lengths[1:]))
            del pieces[i], lengths[i]
        for t in extras:
            if sum(lengths) >= MIN_TOKENS:
                break
            pc = _TOPIC_FN[t](ctx)
            n = len(tokenize(pc[0]))
            if pc[0] and sum(lengths) + n <= MAX_TOKENS:
                pieces.append(pc)
                lengths.append(n)
        break
    text = " ".join(pc[0] for pc in pieces)
    facts: set = set()
    for pc in pieces:
        facts |= pc[1]
    return text, facts


def _check_q(q_idx: int) -> None:
    if not 0 <= q_idx < len(QUESTIONS):
        raise ValueError(f"q_idx={q_idx}: expected 0..{len(QUESTIONS) - 1}")


# --------------------------------------------------------------------------------------------------------------------
# Public API


def answer_pair(scene: Scene, q_idx: int, rng: np.random.Generator,
                rgb_times_s: np.ndarray | None = None, viewing: Viewing | None = None) -> dict[str, str]:
    """Both views' answers to QUESTIONS[q_idx], written with one wording plan drawn from `rng`.
    rgb_times_s: times of the target's frames, when not the default; viewing: the models' input sizes and the event
    sensor, when not the default (see `facts.observe`)."""
    _check_q(q_idx)
    plan = _Plan(int(rng.integers(0, 2**62)))
    return {v: _compose(observe(scene, v, rgb_times_s=rgb_times_s, viewing=viewing), q_idx, plan)[0] for v in VIEWS}


def answer(scene: Scene, q_idx: int, view: str, rng: np.random.Generator,
           rgb_times_s: np.ndarray | None = None, viewing: Viewing | None = None) -> str:
    """One view's answer ("rgb" or "events") to QUESTIONS[q_idx]. Draws one number from `rng` (the wording plan):
    generators in the same state give the two views the same wording (what `answer_pair` does)."""
    _check_q(q_idx)
    if view not in VIEWS:
        raise ValueError(f"view={view!r}: expected one of {VIEWS}")
    plan = _Plan(int(rng.integers(0, 2**62)))
    return _compose(observe(scene, view, rgb_times_s=rgb_times_s, viewing=viewing), q_idx, plan)[0]


def all_answers(scene: Scene, rng: np.random.Generator,
                rgb_times_s: np.ndarray | None = None, viewing: Viewing | None = None) -> list[dict[str, str]]:
    """Answers to all 10 questions, in QUESTIONS order: [{"rgb": ..., "events": ...}] * 10 (same as calling
    `answer_pair` for q = 0..9 with `rng`)."""
    obs = {v: observe(scene, v, rgb_times_s=rgb_times_s, viewing=viewing) for v in VIEWS}
    out = []
    for q in range(len(QUESTIONS)):
        plan = _Plan(int(rng.integers(0, 2**62)))
        out.append({v: _compose(obs[v], q, plan)[0] for v in VIEWS})
    return out


def edit_ratio(a: str, b: str) -> float:
    """Token-level Levenshtein distance between two texts divided by the longer one's token count (0 = identical,
    1 = nothing in common)."""
    ta, tb = tokenize(a), tokenize(b)
    if not ta and not tb:
        return 0.0
    prev = np.arange(len(tb) + 1)
    for i, x in enumerate(ta, 1):
        cur = np.empty_like(prev)
        cur[0] = i
        for j, y in enumerate(tb, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return float(prev[-1]) / max(len(ta), len(tb))


@dataclass(frozen=True)
class AnswerDivergence:
    """How far the two views' answers to one question are apart.

    edit_ratio: token edit distance / longer length; facts_rgb_only / facts_events_only: facts stated by one view
    and not the other (fact-level disagreement = their sum)."""

    question_type: str
    edit_ratio: float
    facts_rgb_only: int
    facts_events_only: int

    @property
    def fact_disagreements(self) -> int:
        return self.facts_rgb_only + self.facts_events_only


def answer_divergence(scene: Scene, q_idx: int, rng: np.random.Generator) -> AnswerDivergence:
    """Divergence between the RGB and event answers to QUESTIONS[q_idx] (one shared wording plan from `rng`)."""
    _check_q(q_idx)
    plan = _Plan(int(rng.integers(0, 2**62)))
    (ta, fa), (tb, fb) = (_compose(observe(scene, v), q_idx, plan) for v in VIEWS)
    return AnswerDivergence(QUESTION_TYPES[q_idx], edit_ratio(ta, tb), len(fa - fb), len(fb - fa))


def divergence_by_type(scenes: list[Scene], rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Mean edit ratio and mean fact disagreements per question type over `scenes` (all 10 questions each)."""
    acc: dict[str, list[AnswerDivergence]] = {}
    for scene in scenes:
        for q in range(len(QUESTIONS)):
            d = answer_divergence(scene, q, rng)
            acc.setdefault(d.question_type, []).append(d)
    return {t: {"edit_ratio": float(np.mean([d.edit_ratio for d in ds])),
                "fact_disagreements": float(np.mean([d.fact_disagreements for d in ds])),
                "n": float(len(ds))} for t, ds in acc.items()}
