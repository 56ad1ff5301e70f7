"""End to end: every stage runs with its smoke profile, the book builds with -W, and a real browser reads it.

The book is assembled in a temporary folder (sources copied, stage pages written by the runner there), so
these tests never touch the book/stages pages that `make book` made.
"""
import json
import os
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sdlib import paths, runner
from sdlib.models import costs, scale

from fixtures_browser import headless_chrome

pytestmark = pytest.mark.slow
SMOKE_CELL_TIMEOUT = 600  # seconds; a smoke stage takes about a minute in all


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """Run all stages (smoke) into a copy of the book and build it; returns (source dir, {stage: record})."""
    src = tmp_path_factory.mktemp("book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(paths.ROOT / name, src / name)
    shutil.copytree(paths.BOOK, src / "book", ignore=shutil.ignore_patterns("stages", "mathjax", "*.ipynb"))
    mathjax = paths.BOOK / "_static" / "mathjax"
    assert (mathjax / "tex-mml-chtml.js").is_file(), "MathJax is not vendored: run `make mathjax`"
    (src / "book" / "_static" / "mathjax").symlink_to(mathjax, target_is_directory=True)
    old = os.environ.get("SDLIB_DATA_DIR")
    os.environ["SDLIB_DATA_DIR"] = str(src / "data")
    try:
        # a cell that hangs fails its stage with an error naming the cell, instead of running into pytest-timeout
        records = {
            stage: runner.run_stage(stage, "smoke", output_dir=src / "book" / "stages", progress_bar=False,
                                    cell_timeout=SMOKE_CELL_TIMEOUT)
            for stage in runner.toc_stages()
        }
    finally:
        if old is None:
            os.environ.pop("SDLIB_DATA_DIR", None)
        else:
            os.environ["SDLIB_DATA_DIR"] = old
    runner.build_html(src)
    return src, records


def test_every_stage_writes_a_result_record(smoke_book):
    src, records = smoke_book
    for stage, rec in records.items():
        saved = json.loads((src / "data" / "results" / f"{stage}.json").read_text())
        assert saved["stage"] == stage and saved["profile"] == "smoke"
        assert saved["metrics"], f"{stage} saved no metrics"
        assert set(saved) >= {"stage", "profile", "parameters", "git_rev", "started", "duration_s", "metrics"}


def test_theory_stage_values(smoke_book):
    src, records = smoke_book
    metrics = records["07_theory"]["metrics"]
    published = {f"{a:.2f}": v for a, v in {0.21: 1.01, 0.30: 1.04, 0.40: 1.09, 0.50: 1.14, 0.60: 1.19, 0.70: 1.25,
                                             0.80: 1.32, 0.90: 1.39, 1.00: 1.47}.items()}
    assert {k: round(v, 2) for k, v in metrics["seed_table"].items()} == published
    assert metrics["free_tokens_4090"] == 22
    glued = runner.glued_values(src / "book" / "stages" / "07_theory.ipynb")
    assert glued["seed_mismatch_est"] == 0 and glued["seed_mismatch_quoted"] == 1
    assert glued["mc_max_rel_err"] < 0.03  # smoke runs 2e4 trials; the unit tests check 1% at 1e5
    assert 0.80 < glued["alpha_from_seed_rate"] < 0.83
    assert 1.0 < glued["model_s_at_seed"] < glued["model_s_perfect"] < 2.0
    assert 0.0 < glued["decision_cross_fraction"] < 1.0


def test_html_has_every_page(smoke_book):
    src, _ = smoke_book
    html = src / "_build" / "html"
    assert (html / "index.html").is_file()
    page = (html / "book" / "stages" / "07_theory.html").read_text()
    assert "Theory" in page and "<img" in page
    assert "1.47" in page  # a glued number reached the prose/table
    assert not (html / "reports").exists() or not any((html / "reports").iterdir())


def test_a_missing_glue_key_fails_the_build(smoke_book, tmp_path):
    src, _ = smoke_book
    broken = tmp_path / "broken"
    shutil.copytree(src, broken, symlinks=True, ignore=shutil.ignore_patterns("_build", "data"))
    note = broken / "book" / "notes" / "cascaded_sd.md"
    note.write_text(note.read_text() + "\n\nA stale number: {glue:text}`../stages/07_theory.ipynb::no_such_key:.2f`.\n")
    with pytest.raises(runner.StageFailed, match="jupyter-book build failed"):
        runner.build_html(broken)


# ---- a real browser ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(smoke_book):
    html = smoke_book[0] / "_build" / "html"
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test log to test results
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = headless_chrome(tmp_path_factory.mktemp("chromium-profile"), performance_log=True)
    yield driver
    driver.quit()


def _requested_urls(driver):
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def _wait_for_mathjax(driver):
    driver.set_script_timeout(60)
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "if (!window.MathJax || !MathJax.startup) { done('no MathJax'); return; }"
        "MathJax.startup.promise.then(() => done('ok')).catch(e => done('error: ' + e));"
    )


def _images(driver):
    return driver.execute_script(
        "return Array.from(document.images).map(i => [i.currentSrc || i.src, i.complete, i.naturalWidth]);"
    )


def _load(driver, url):
    """Open url and wait until the page it ends on (after a meta refresh, as index.html is) has finished loading."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    # a script can land mid-navigation and fail; the wait retries it
    WebDriverWait(driver, 60, ignored_exceptions=(WebDriverException,)).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && document.body !== null"
        " && !document.querySelector('meta[http-equiv=\"Refresh\" i]');"))


@pytest.mark.parametrize("page,title_part", [("index.html", "Cross-modal speculative decoding"),
                                             ("book/stages/07_theory.html", "Theory")])
def test_browser_renders_page_offline(browser, served, page, title_part):
    browser.get_log("performance")  # drop earlier entries
    _load(browser, f"{served}/{page}")
    if page == "index.html":  # Jupyter Book writes it as a redirect to the root page
        assert browser.current_url.endswith("/book/intro.html"), browser.current_url
    assert title_part in browser.title
    assert "speculative decoding" in browser.title.lower() or "Theory" in browser.title
    has_math = browser.execute_script("return document.querySelectorAll('.math').length;") > 0
    if has_math or "theory" in page:  # Sphinx loads MathJax only on pages that contain math
        assert _wait_for_mathjax(browser) == "ok"
    images = _images(browser)
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert not broken, f"images that did not load: {broken}"
    text = browser.execute_script("return document.body.innerText;")
    assert "$$" not in text, "raw $$ left in the page: MathJax did not typeset it"
    network = [u for u in _requested_urls(browser) if u.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")]
    assert any(u.startswith(f"{served}/{page}") for u in network), "the page request itself was not logged"
    off_host = [u for u in network if not u.startswith(served + "/")]
    assert not off_host, f"requests left the host: {off_host}"
    if "theory" in page:
        assert len(images) >= 5, f"expected the theory figures, found {len(images)} images"
        n_math = browser.execute_script("return document.querySelectorAll('mjx-container').length;")
        n_blocks = browser.execute_script("return document.querySelectorAll('div.math').length;")
        assert n_blocks >= 3 and n_math >= n_blocks, (n_math, n_blocks)
        assert "\\frac" not in text
        shots = paths.ROOT / "_build" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shots / "theory.png"))
    else:
        (paths.ROOT / "_build" / "screenshots").mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(paths.ROOT / "_build" / "screenshots" / "index.png"))


def test_data_stage_values(smoke_book):
    src, records = smoke_book
    m = records["00_data"]["metrics"]
    assert m["clips"] == 60 and m["failed_clips"] == 0  # the smoke profile's 60 scenes, all built
    assert m["train_pairs"] + m["val_pairs"] + m["test_pairs"] == 10 * m["clips"]
    assert min(m["train_pairs"], m["val_pairs"], m["test_pairs"]) > 0
    assert m["sim_events_per_s"] > 1e5  # the benchmark quoted in the book measures ~1e6; far below means broken
    assert set(m["divergence_by_type"]) == {"elements", "summary", "layout", "vehicles", "activity"}
    glued = runner.glued_values(src / "book" / "stages" / "00_data.ipynb")
    assert 0.2 < glued["edit_ratio_mean"] < 0.8  # the views differ (sensors), yet share one wording plan
    assert 30 <= glued["rgb_tokens_min"] <= glued["rgb_tokens_max"] <= 80


def test_models_stage_values(smoke_book):
    src, records = smoke_book
    m = records["01_models"]["metrics"]
    sizes = scale.ScaleSizes()
    assert (sizes.target_visual_tokens, sizes.drafter_visual_tokens) == (400, 106)
    assert m["ratios"]["visual_token_ratio"] == pytest.approx(sizes.target_visual_tokens / sizes.drafter_visual_tokens)
    # the smoke run times the default shapes: every cost ratio lands in the ±30% band around the 4090's
    assert m["ratios_within_30pct"] == dict.fromkeys(costs.REFERENCE_RATIOS, True), (m["ratios"], m["ratio_iqr"])
    assert set(m["ratio_iqr"]) == set(m["ratios"]) and len(m["cost_repeats"]) == 3
    # (that a trained model beats a unigram model by a wide margin is tested on a model trained longer than smoke's,
    # in test_models_train.py)
    for who in ("drafter", "target"):
        q = m["answer_quality"][who]
        assert set(q["per_question_type"]) == {"elements", "summary", "layout", "vehicles", "activity"}
        assert set(q["per_fact_kind"]) >= {"object", "colour", "count", "light", "motion", "static"}
    assert m["tokenizers"]["identical"] and m["n_test_prompts"] == 20
    # the agreement vectors are kept: one per prompt, as long as the target's answer, and they give the mean
    rows = [json.loads(line) for line in Path(m["agreement_vectors"]).read_text().splitlines()]
    assert len(rows) == 20 and all(len(r["match"]) == len(r["fact_token"]) > 0 for r in rows)
    matched = sum(sum(r["match"]) for r in rows) / sum(len(r["match"]) for r in rows)
    assert matched == pytest.approx(m["drafter_target_agreement"])
    for k, stats in m["accept_lengths"].items():
        assert sum(stats["histogram"]) == stats["rounds"] and len(stats["histogram"]) == int(k) + 1


def test_benchmark_stage_schema_and_losslessness(smoke_book):
    """Stage 06 on the smoke profile: every config of the issue is in the result file with the keys readers rely on,
    every speculative output equals the target's own (mismatches == 0, counted from the per-sample records), and the
    three numbers are there for every config our engine ran."""
    src, records = smoke_book
    m = records["06_benchmark_e2e"]["metrics"]
    keys = {"speedup_ratio_of_means", "speedup_mean_of_ratios", "speedup_predicted", "speedup_4090_projected",
            "mean_accept_len", "acceptance_rate", "mismatches", "n_samples", "placement"}
    wanted = {"target_ar", "hf_assisted", "hf_prompt_lookup", "seed_protocol", "crossmodal_multiround",
              "crossmodal_pipelined", "target_head", "target_head_eagle3", "two_phase", "two_phase_shared",
              "token_drafter", "two_phase_conf", "two_phase_activity", "target_ar_sampled", "target_head_sampled",
              "two_phase_sampled"}
    assert wanted <= set(m["configs"])
    for name, c in m["configs"].items():
        assert keys <= set(c), name
        assert c["mismatches"] == 0, name
        if "error" in c:  # a transformers peer that cannot run on this target is reported, not hidden
            assert name.startswith("hf_"), name
            continue
        assert c["n_samples"] == (m["sampling_prompts"] if name.endswith("_sampled") else m["n_prompts"]), name
        assert c["speedup_ratio_of_means"] > 0 and c["speedup_mean_of_ratios"] > 0, name
        if name not in ("hf_assisted",):
            assert c["speedup_predicted"] > 0 and c["speedup_4090_projected"] > 0, name
    for name in ("crossmodal_multiround", "crossmodal_pipelined", "two_phase", "token_drafter"):
        assert m["configs"][name]["placement"] == "two_devices", name
    assert m["configs"]["seed_protocol"]["placement"] == "modelled"
    assert m["configs"]["two_phase_shared"]["placement"] == "shared_device"
    lines = [json.loads(line) for line in Path(m["records"]).read_text().splitlines()]
    greedy = [r for r in lines if r.get("tokens") is not None]
    assert len(greedy) >= m["n_prompts"] * 10 and all(r["identical_to_baseline"] for r in greedy)
    assert m["goals"] and m["headline"]["config"] in m["configs"]


def test_every_published_page_exists_states_its_profile_and_is_clean(smoke_book):
    src, records = smoke_book
    for stage in runner.toc_stages():
        page = src / "book" / "stages" / f"{stage}.ipynb"
        assert page.is_file(), f"{stage}: no published page"
        assert not runner.page_failed(page), f"{page} records a failed papermill run"
        assert runner.glued_values(page).get("profile") == "smoke", f"{stage} does not state its profile"
        html = (src / "_build" / "html" / "book" / "stages" / f"{stage}.html").read_text()
        assert "smoke" in html and "Traceback (most recent call last)" not in html, stage


def test_target_greedy_through_interface_equals_generate_on_50_test_prompts(smoke_book):
    import torch

    from sdlib.data.layout import load_clip, read_instructions
    from sdlib.decoding.ar import greedy_decode
    from sdlib.models import scale

    src, records = smoke_book
    drafter, target = scale.load_pair(records["01_models"]["metrics"]["pair_dir"])
    test_dir = Path(records["00_data"]["metrics"]["dataset_root"]) / "test"
    recs = read_instructions(test_dir)
    assert len(recs) >= 50
    clips = {}
    for rec in recs:
        clip = clips.setdefault(rec["clip_id"], load_clip(test_dir, rec))
        inputs = target.prepare(rec["conversations"][0]["value"], clip.frames)
        ours = greedy_decode(target, inputs, 24).tokens
        with torch.no_grad():
            ref = target.model.generate(input_ids=inputs.input_ids, pixel_values_videos=inputs.extra["pixel_values_videos"],
                                        do_sample=False, max_new_tokens=24, eos_token_id=target.eos_token_id)
        assert ours == ref[0, inputs.input_ids.shape[1]:].tolist(), rec["id"]


def test_real_profile_fails_fast_without_weights(smoke_book, tmp_path, monkeypatch):
    monkeypatch.setenv("SDLIB_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(runner.StageFailed, match="eventgpt_path: .*EventGPT-7b does not exist.*profile 'real'"):
        runner.run_stage("01_models", "real", output_dir=tmp_path / "stages", progress_bar=False)
    assert not (tmp_path / "stages" / "01_models.ipynb").exists()


def test_every_drafter_is_lossless_on_the_trained_smoke_pair(smoke_book):
    """The losslessness suite on trained weights: every drafter kind, on the trained smoke pair, emits the target's
    greedy answer on all 60 test prompts of the smoke world and 60 validation prompts (the smoke world has no more
    test prompts; no model is fitted or selected on them). The adapter and the head are the closed-form linear ones,
    fitted on training prompts."""
    from sdlib.align.linear import fit_adapter, fit_head, paired_states
    from sdlib.data.layout import load_clip
    from sdlib.decoding.ar import greedy_decode
    from sdlib.decoding.drafters import FeatureDrafter, TargetHeadDrafter, TokenDrafter, TwoPhaseDrafter
    from sdlib.decoding.speculative import speculative_decode
    from sdlib.models import quality, scale

    src, records = smoke_book
    pair_dir = Path(records["01_models"]["metrics"]["pair_dir"])
    drafter, target = scale.load_pair(pair_dir)
    sizes = scale.ScaleSizes(**json.loads((pair_dir / "pair.json").read_text())["sizes"])
    root = Path(records["00_data"]["metrics"]["dataset_root"])

    def split(name, n):
        out, clips = [], {}
        for rec in quality.test_prompts(root / name)[:n]:
            clip = clips.setdefault(rec["clip_id"], load_clip(root / name, rec))
            q = rec["conversations"][0]["value"]
            out.append((target.prepare(q, clip.frames), drafter.prepare(q, scale.drafter_visual(clip, sizes))))
        return out

    fit_on = split("train", 40)
    states = paired_states(drafter, target, fit_on, [greedy_decode(target, t, 24).tokens for t, _ in fit_on])
    adapter, _ = fit_adapter(states[:30], states[30:], target.lm_head)
    head, _ = fit_head(states[:30], states[30:], target.lm_head, target.embed_tokens)
    v = target.lm_head.out_features
    makers = {
        "token": lambda: TokenDrafter(drafter, v),
        "feature": lambda: FeatureDrafter(drafter, adapter, target.lm_head),
        "target_head": lambda: TargetHeadDrafter(head, target.lm_head, target.embed_tokens),
        "two_phase": lambda: TwoPhaseDrafter(FeatureDrafter(drafter, adapter, target.lm_head),
                                             TargetHeadDrafter(head, target.lm_head, target.embed_tokens)),
    }
    requests = split("test", 60) + split("val", 60)
    assert len(requests) == 120
    accepted = dict.fromkeys(makers, 0)
    for i, (t_in, d_in) in enumerate(requests):
        reference = greedy_decode(target, t_in, 24).tokens
        for name, make in makers.items():
            spec = speculative_decode(target, t_in, make(), d_in, 1 + i % 4, 24, window=4 * (name == "two_phase"))
            assert spec.tokens == reference, (name, i)
            accepted[name] += spec.stats.accepted_total
    assert all(n > 0 for n in accepted.values()), accepted  # trained drafters' drafts were accepted too
