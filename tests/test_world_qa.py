"""Questions, the two answer views, the facts behind them, and the divergence measure."""

import dataclasses
import re

import numpy as np
import pytest

from sdlib.world import (MAX_TOKENS, MIN_TOKENS, QUESTION_TYPES, QUESTIONS, all_answers, answer,
                         answer_divergence, answer_pair, divergence_by_type, edit_ratio, observe, render_radiance,
                         sample_scene, tokenize)
from sdlib.world import facts as facts_mod
from sdlib.world.render import Camera, camera_dn, rgb_noise_dn
from sdlib.world.scene import COLOURS, TrafficLight

SEED_QUESTIONS = [  # reference/seed_system.md section 3, in order
    "What are the key elements in this scene?",
    "Can you elaborate on the elements of the scene provided?",
    "What is this scene about?",
    "What is the layout of the road in the scene?",
    "What type of vehicles are present in the scene and how are they positioned?",
    "What do you think is going on in this scene?",
    "What elements are present in the scene?",
    "What do you see happening in this scene?",
    "Describe the following scene.",
    "What types of vehicles are present in the scene and how are they positioned?",
]


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(2024)
    return [sample_scene(rng) for _ in range(120)]


def test_the_ten_questions_verbatim():
    assert list(QUESTIONS) == SEED_QUESTIONS
    assert len(QUESTION_TYPES) == 10 and set(QUESTION_TYPES) == {"elements", "summary", "layout", "vehicles",
                                                                  "activity"}


def test_tokenize_counts_words_and_punctuation():
    assert tokenize("A red car, far ahead. It's moving.") == ["A", "red", "car", ",", "far", "ahead", ".", "It's",
                                                              "moving", "."]


def test_answers_are_30_to_80_tokens_and_several_sentences(scenes):
    rng = np.random.default_rng(0)
    for scene in scenes:
        for q, pair in enumerate(all_answers(scene, rng)):
            for view, text in pair.items():
                n = len(tokenize(text))
                assert MIN_TOKENS <= n <= MAX_TOKENS, (q, view, n, text)
                assert len(re.findall(r"[.!?](\s|$)", text)) >= 2, text
                assert text[0].isupper() and "  " not in text and "{" not in text


def test_wording_and_order_vary_with_the_scene(scenes):
    rng = np.random.default_rng(1)
    for q in (0, 3, 4, 8):
        texts = [answer(s, q, "rgb", rng) for s in scenes[:40]]
        assert len(set(texts)) >= 38
        openings = {" ".join(tokenize(t)[:3]) for t in texts}
        assert len(openings) >= 3, openings


def test_answers_are_deterministic_given_the_rng():
    scene = sample_scene(np.random.default_rng(5))
    a = answer(scene, 4, "rgb", np.random.default_rng(9))
    assert a == answer(scene, 4, "rgb", np.random.default_rng(9))
    pair = answer_pair(scene, 4, np.random.default_rng(9))
    assert pair["rgb"] == a and pair["events"] == answer(scene, 4, "events", np.random.default_rng(9))
    with pytest.raises(ValueError, match="q_idx=10"):
        answer(scene, 10, "rgb", np.random.default_rng(0))
    with pytest.raises(ValueError, match="view='lidar'"):
        answer(scene, 0, "lidar", np.random.default_rng(0))


def _colour_words():
    return sorted({w for name in COLOURS for w in name.split()} - {"dark"})


def test_event_answers_never_name_colours(scenes):
    rng = np.random.default_rng(2)
    pattern = re.compile(r"\b(" + "|".join(_colour_words()) + r")\b")
    rgb_named = 0
    for scene in scenes:
        switching = scene.traffic_light is not None and scene.traffic_light.switches
        for pair in all_answers(scene, rng):
            if not switching:  # a switching light's state is inferred from lamp positions, a legitimate colour word
                assert not pattern.search(pair["events"]), pair["events"]
            rgb_named += bool(pattern.search(pair["rgb"]))
    assert rgb_named > 300  # the RGB view does name colours


def test_standing_ego_hides_static_things_from_events(scenes):
    still = [s for s in scenes if not s.ego.moving]
    assert len(still) > 20
    n_static = 0
    for s in still:
        ev, rgb = observe(s, "events"), observe(s, "rgb")
        assert all(s.road_user(o.uid).moving for o in ev.objects)
        assert ev.road is None and ev.statics == () and ev.environment is None and ev.illumination is None
        n_static += sum(not s.road_user(o.uid).moving for o in rgb.objects)
        for q in (4, 9):
            text = answer(s, q, "events", np.random.default_rng(q))
            assert "is parked" not in text and "stands parked" not in text
    assert n_static > 20  # ... which the RGB view does report


def test_moving_ego_reveals_static_structure_to_events(scenes):
    for s in [s for s in scenes if s.ego.moving][:30]:
        ev = observe(s, "events")
        assert ev.road is not None and ev.static_visible and ev.environment == s.environment


def _light_scene(switch_time, ego_moving=False):
    base = sample_scene(np.random.default_rng(31), ego_moving=ego_moving, illumination="day")
    road = dataclasses.replace(base.road, curvature_per_m=0.0)
    light = TrafficLight(s_m=15.0, d_m=road.right_edge_m + 1.0, pole_height_m=2.8, state_start="red",
                         state_end="green" if switch_time is not None else "red", switch_time_s=switch_time)
    return dataclasses.replace(base, road=road, traffic_light=light, road_users=(), statics=())


def test_traffic_light_knowledge_per_view():
    switching = _light_scene(0.4)
    assert observe(switching, "rgb").light.switched and observe(switching, "events").light.switched
    text = answer(switching, 0, "events", np.random.default_rng(0))
    assert "from red to green" in text and ("lamp" in text)
    steady = _light_scene(None)
    assert observe(steady, "rgb").light.state_start == "red"
    assert observe(steady, "events").light is None  # a steady lamp on a static pole produces no events
    assert "red" in answer(steady, 0, "rgb", np.random.default_rng(0))
    moving = _light_scene(None, ego_moving=True)
    assert observe(moving, "events").light.state_start is None  # seen as an object, colour unknown
    late = _light_scene(0.95)  # after the last of the 8 RGB frames (0.875 s)
    assert not observe(late, "rgb").light.switched and observe(late, "events").light.switched


def test_rgb_misses_some_dark_objects_at_night_and_events_hardly_do():
    rng = np.random.default_rng(7)
    missed_night = missed_day = 0
    ev_day = ev_both = ev_missed_night = ev_missed_day = 0
    for _ in range(100):
        s = sample_scene(rng, illumination="night", ego_moving=True)
        missed_night += sum(observe(s, "rgb").missed.values())
        day = dataclasses.replace(s, illumination="day")
        missed_day += sum(observe(day, "rgb").missed.values())
        # events work on log luminance, so day and night give nearly the same event facts; only the background
        # activity, which rises in the dark, can drown an object's few events
        night = observe(s, "events")
        day_ids = {o.uid for o in observe(day, "events").objects}
        ev_day += len(day_ids)
        ev_both += len(day_ids & {o.uid for o in night.objects})
        ev_missed_night += sum(night.missed.values())
        ev_missed_day += sum(observe(day, "events").missed.values())
    assert missed_day == 0 and missed_night >= 5
    assert ev_day > 100 and ev_both >= 0.95 * ev_day
    # darkness costs the event camera less than the RGB camera (events also miss what does not move, day and night)
    assert ev_missed_night - ev_missed_day < missed_night - missed_day


def test_rgb_visibility_rule_tracks_the_rendered_image():
    """The analytic RGB visibility agrees with the contrast each object really adds to the rendered frame."""
    rng = np.random.default_rng(0)
    fr = facts_mod._frame("rgb", 128, facts_mod.Viewing())
    agree = total = 0
    for _ in range(12):
        s = sample_scene(rng, illumination="night")
        seen = {o.uid for o in observe(s, "rgb").objects}
        in_view = facts_mod._visibility(s, fr, 0.5)
        full = render_radiance(s, np.array([0.5]), 128, 96)[0]
        for u in s.road_users:
            box, _, z = facts_mod._user_box(s, fr.cam, u, 0.5)
            if z <= 1.5 or not facts_mod._tall_enough(box, fr) or not in_view[u.uid].in_view():
                continue
            others = tuple(v for v in s.road_users if v.uid != u.uid)
            without = render_radiance(dataclasses.replace(s, road_users=others), np.array([0.5]), 128, 96)[0]
            snr = (np.abs(camera_dn(full, "night") - camera_dn(without, "night")) /
                   rgb_noise_dn(without, "night")).max(axis=-1)  # [H, W]
            mask = snr > 0.3
            measured = snr[mask].sum() / np.sqrt(max(mask.sum(), 1))
            agree += (u.uid in seen) == (measured >= facts_mod.RGB_VISIBLE_SNR)
            total += 1
    assert total > 30 and agree / total >= 0.85


def test_event_visibility_rule_tracks_simulated_events():
    """Road users the events view reports do produce events on the simulated sensor (ego standing still, so that
    nothing else moves behind them)."""
    from sdlib.world import EventSimConfig, clip_times_us, luminance, simulate_events
    rng = np.random.default_rng(12)
    cam = Camera(128, 96)
    times = clip_times_us(1.0, 100)
    hits = total = 0
    for _ in range(6):
        s = sample_scene(rng, ego_moving=False)
        ev = simulate_events(luminance(render_radiance(s, times / 1e6, 128, 96)), times, EventSimConfig(),
                             np.random.default_rng(0))
        counts = np.zeros((96, 128), dtype=int)
        np.add.at(counts, (ev["y"], ev["x"]), 1)
        for o in observe(s, "events").objects:
            if o.partly_hidden:
                continue
            u = s.road_user(o.uid)
            b0, _, _ = facts_mod._user_box(s, cam, u, 0.0)
            b1, _, _ = facts_mod._user_box(s, cam, u, 1.0)
            c0, c1 = max(int(min(b0[0], b1[0])), 0), min(int(np.ceil(max(b0[1], b1[1]))), 128)
            r0, r1 = max(int(min(b0[2], b1[2])), 0), min(int(np.ceil(max(b0[3], b1[3]))), 96)
            total += 1
            hits += counts[r0:r1, c0:c1].sum() >= 3
    assert total >= 8 and hits / total >= 0.9, (hits, total)


def test_edit_ratio():
    assert edit_ratio("a b c", "a b c") == 0.0
    assert edit_ratio("a b c", "a x c") == pytest.approx(1 / 3)
    assert edit_ratio("a b", "c d") == 1.0
    assert edit_ratio("A car.", "A red car.") == pytest.approx(1 / 4)


def test_divergence_is_zero_only_where_the_sensors_agree(scenes):
    rng = np.random.default_rng(3)
    for s in scenes[:20]:
        for q in range(10):
            d = answer_divergence(s, q, rng)
            assert d.question_type == QUESTION_TYPES[q] and 0.0 <= d.edit_ratio <= 1.0
            assert d.fact_disagreements == d.facts_rgb_only + d.facts_events_only >= 0
    # physics: a standing ego hides more from the events than a moving one does
    moving = [s for s in scenes if s.ego.moving and s.illumination == "day"][:25]
    still = [s for s in scenes if not s.ego.moving and s.illumination == "day"][:25]
    mean = lambda ss: np.mean([answer_divergence(s, q, rng).fact_disagreements for s in ss for q in range(10)])
    assert mean(moving) < mean(still)
    table = divergence_by_type(scenes[:10], rng)
    assert set(table) == set(QUESTION_TYPES)
    assert sum(row["n"] for row in table.values()) == 100
