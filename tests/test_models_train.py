"""Scale-model training: prefix sharing is exact, a killed run resumes to the same weights, checkpoints are
safetensors, and a finished pair is reused from the cache."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdlib.world import dataset
from sdlib.models import scale
from sdlib.models.eventgpt import EVENT_TOKEN_INDEX
from sdlib.models.tokenizer import train_tokenizer
from sdlib.models.train import (IGNORE, DrafterLM, TargetLM, TrainConfig, clip_loss, load_optimizer, make_example,
                                save_optimizer, train_model)
from sdlib.world import QUESTIONS

TINY = scale.ScaleSizes(target_image=32, target_patch=8, target_vision_hidden=32, target_hidden=64, target_layers=2,
                        target_heads=2, target_intermediate=128, event_image=32, event_patch=8, drafter_vision_hidden=32,
                        drafter_hidden=64, drafter_layers=2, drafter_heads=2, drafter_intermediate=128)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w") / "w"
    dataset.build_world(dataset.WorldSpec(name="w", n_scenes=14, seed=1), root=root, progress=False, log=lambda *_: None)
    return root


@pytest.fixture(scope="module")
def pair(world):
    tok = train_tokenizer(scale.world_corpus(world / "train"))
    return tok, *scale.make_decoders(tok, TINY)


def _full_loss(model_fn, ex, n_visual_extra=0):
    total, count = 0.0, 0
    for cont, lab in zip(ex.conts, ex.labels):
        ids = torch.cat([ex.prefix_ids, cont])[None]
        labels = torch.cat([torch.full((n_visual_extra,), IGNORE), torch.full_like(ex.prefix_ids, IGNORE), lab])
        logits = model_fn(ids)[0, :-1]
        target = labels[1:]
        total += F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum").item()
        count += int((target != IGNORE).sum())
    return total / count, count


def test_shared_prefix_loss_equals_full_sequences(world, pair):
    tok, drafter, target = pair
    ex_t = scale.clip_examples("target", target, world / "train", TINY, max_clips=1)[0]
    ex_d = scale.clip_examples("drafter", drafter, world / "train", TINY, max_clips=1)[0]
    assert len(ex_t.conts) == 10 and ex_t.questions == list(range(10))
    with torch.no_grad():
        shared, n = clip_loss(TargetLM(target.model), ex_t, pad_id=tok.pad_token_id)
        full, m = _full_loss(lambda ids: target.model(input_ids=ids, pixel_values_videos=ex_t.visual[None]).logits, ex_t)
        assert n == m and float(shared) == pytest.approx(full, rel=1e-5)
        shared, n = clip_loss(DrafterLM(drafter.model), ex_d, pad_id=tok.pad_token_id)
        n_ev = TINY.drafter_visual_tokens - 1  # the placeholder expands into this many extra positions
        full, m = _full_loss(lambda ids: drafter.model(input_ids=ids, event_pixel_values=ex_d.visual).logits, ex_d, n_ev)
        assert n == m and float(shared) == pytest.approx(full, rel=1e-5)


def test_training_sequences_match_inference_prompts(world, pair):
    tok, drafter, target = pair
    ex = scale.clip_examples("target", target, world / "train", TINY, max_clips=1)[0]
    q = QUESTIONS[ex.questions[3]]
    from sdlib.data.layout import load_clip, read_instructions
    rec = read_instructions(world / "train")[0]
    prompt = target.prepare(q, load_clip(world / "train", rec).frames).input_ids[0]
    answer_start = int((ex.labels[3] != IGNORE).nonzero()[0])
    assert torch.equal(torch.cat([ex.prefix_ids, ex.conts[3][:answer_start]]), prompt)
    assert int(ex.conts[3][-1]) == tok.eos_token_id


def test_optimizer_state_roundtrip_is_safetensors(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    save_optimizer(opt, tmp_path / "optim")
    assert (tmp_path / "optim.safetensors").is_file() and json.loads((tmp_path / "optim.json").read_text())
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    load_optimizer(fresh, tmp_path / "optim")
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for name, v in a["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][k][name]))


class _Crash(Exception):
    pass


def test_killed_training_resumes_to_identical_weights(world, pair, tmp_path):
    tok, drafter, target = pair
    train = scale.clip_examples("drafter", drafter, world / "train", TINY, max_clips=3)
    val = scale.clip_examples("drafter", drafter, world / "val", TINY, max_clips=1)
    cfg = TrainConfig(epochs=2, eval_every=2, val_clips=1, warmup_steps=1, patience=99)

    def fresh():
        return scale.build_drafter(tok, TINY, seed=5)

    ref_model = fresh()
    ref = train_model(ref_model, DrafterLM(ref_model), train, val, cfg, tmp_path / "ref", tok.pad_token_id,
                      log=lambda *_: None)
    assert ref.steps == 6 and len(ref.history) == 3

    class CrashAt:  # a progress bar that dies after the 5th step (the step-4 checkpoint exists)
        def __init__(self, total, initial, **_):
            self.n = initial

        def update(self, k):
            self.n += k
            if self.n == 5:
                raise _Crash()

        def set_postfix(self, **_):
            pass

        def close(self):
            pass

    model = fresh()
    with pytest.raises(_Crash):
        train_model(model, DrafterLM(model), train, val, cfg, tmp_path / "run", tok.pad_token_id, progress=CrashAt,
                    log=lambda *_: None)
    model = fresh()  # a new process would start from scratch weights, then load the checkpoint
    res = train_model(model, DrafterLM(model), train, val, cfg, tmp_path / "run", tok.pad_token_id,
                      log=lambda *_: None)
    assert res.resumed_from == 4 and res.steps == 6
    assert [h["val_loss"] for h in res.history] == pytest.approx([h["val_loss"] for h in ref.history], rel=1e-6)
    for (name, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not list((tmp_path / "run").rglob("*.pt")) and not list((tmp_path / "run").rglob("*.bin"))


def test_validation_only_selection_and_early_stop(world, pair, tmp_path):
    tok, drafter, _ = pair
    train = scale.clip_examples("drafter", drafter, world / "train", TINY, max_clips=2)
    val = scale.clip_examples("drafter", drafter, world / "val", TINY, max_clips=1)
    model = scale.build_drafter(tok, TINY, seed=1)
    cfg = TrainConfig(epochs=20, eval_every=1, val_clips=1, lr=5e-2, warmup_steps=1, patience=2)  # lr far too high
    res = train_model(model, DrafterLM(model), train, val, cfg, tmp_path / "es", tok.pad_token_id, log=lambda *_: None)
    losses = [h["val_loss"] for h in res.history]
    assert res.best_val_loss == pytest.approx(min(losses))
    if res.stopped_early:
        assert res.steps < 40 and losses[-1] >= min(losses) and losses[-2] >= min(losses)


def test_trained_pair_is_cached(world, tmp_path):
    cfg = TrainConfig(epochs=1, eval_every=1, val_clips=1, warmup_steps=1)
    kw = dict(max_train_clips=1, max_val_clips=1, parallel=False, progress=False, log=lambda *_: None)
    first = scale.train_pair(world, TINY, cfg, tmp_path, **kw)
    assert not first["cached"] and (Path(first["dir"]) / "DONE").is_file()
    messages = []
    again = scale.train_pair(world, TINY, cfg, tmp_path, **{**kw, "log": messages.append})
    assert again["cached"] and again["key"] == first["key"] and "reusing" in messages[0]
    other = scale.train_pair(world, TINY, TrainConfig(epochs=1, eval_every=1, val_clips=1, warmup_steps=1, seed=1),
                             tmp_path, **kw)
    assert other["key"] != first["key"]
    drafter, target = scale.load_pair(first["dir"])
    assert drafter.model.config.hidden_size == TINY.drafter_hidden
    assert not list(Path(first["dir"]).rglob("*.bin"))


# A child process trains a tiny drafter and dies (os._exit, like SIGKILL: no cleanup) at its n-th file event: a
# safetensors/JSON file written, or a rename about to happen (so both "file written, not yet renamed" and "renamed"
# states are hit). The parent then resumes in a fresh process and compares the final weights bit for bit.
_CHILD = textwrap.dedent("""
    import json, os, pathlib, sys
    import safetensors.torch as st
    from sdlib.models import scale, train as T
    from sdlib.models.tokenizer import train_tokenizer
    world, out, kill_at = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
    events = [0]
    def event():
        events[0] += 1
        if events[0] == kill_at:
            os._exit(137)
    real_replace, real_save, real_write = os.replace, st.save_file, pathlib.Path.write_text
    def replace(a, b):
        event(); real_replace(a, b)
    def save_file(*a, **k):
        real_save(*a, **k); event()
    def write_text(self, *a, **k):
        n = real_write(self, *a, **k); event(); return n
    os.replace, st.save_file, pathlib.Path.write_text = replace, save_file, write_text
    sizes = scale.ScaleSizes(**json.loads(sys.argv[4]))
    cfg = T.TrainConfig(**json.loads(sys.argv[5]))
    tok = train_tokenizer(scale.world_corpus(world / "train"))
    drafter, _ = scale.make_decoders(tok, sizes, seed=cfg.seed)
    train = scale.clip_examples("drafter", drafter, world / "train", sizes, max_clips=3)
    val = scale.clip_examples("drafter", drafter, world / "val", sizes, max_clips=1)
    res = T.train_model(drafter.model, T.DrafterLM(drafter.model), train, val, cfg, out, tok.pad_token_id,
                        log=lambda *_: None)
    print(json.dumps({"events": events[0], "steps": res.steps, "stopped_early": res.stopped_early,
                      "resumed_from": res.resumed_from}))
""")


def _child(world, out, kill_at, cfg):
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(world), str(out), str(kill_at),
                           json.dumps(TINY.to_dict()), json.dumps(cfg.to_dict())],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("case", ["full_run", "early_stop"])
def test_kill_at_any_file_event_resumes_to_identical_weights(world, tmp_path, case):
    from safetensors.torch import load_file

    if case == "full_run":  # vision pretraining, then three evaluations, improving: best is rewritten, no early stop
        cfg = TrainConfig(epochs=2, eval_every=2, val_clips=1, warmup_steps=1, patience=99, seed=3, probe_steps=3,
                          fact_min_clips=1, vision_lr_scale=0.0)
    else:  # a learning rate far too high: validation loss rises and training stops early
        cfg = TrainConfig(epochs=4, eval_every=1, val_clips=1, warmup_steps=1, patience=1, lr=0.5, seed=4)
    ref = _child(world, tmp_path / "ref", -1, cfg)
    assert ref.returncode == 0, ref.stderr
    info = json.loads(ref.stdout.strip().splitlines()[-1])
    assert info["stopped_early"] == (case == "early_stop")
    n = info["events"]
    reference = load_file(str(tmp_path / "ref" / "best.safetensors"))
    # the first checkpoint half written, a later one mid-way, and the final export half done (after early stopping
    # in the second case); each kill leaves a different mix of complete and temporary files behind
    for kill_at in sorted({3, n // 2, n - 1}):
        run = tmp_path / f"kill{kill_at}"
        died = _child(world, run, kill_at, cfg)
        assert died.returncode == 137, (kill_at, died.stderr)
        again = _child(world, run, -1, cfg)
        assert again.returncode == 0, (kill_at, again.stderr)
        resumed = load_file(str(run / "best.safetensors"))
        assert resumed.keys() == reference.keys()
        for k in reference:
            assert torch.equal(resumed[k], reference[k]), (kill_at, k)
        assert not list(run.glob("*.tmp")) and len(list(run.glob("ckpt-*"))) == 1


def test_damaged_checkpoint_or_model_folder_is_an_error_naming_the_file(world, pair, tmp_path):
    tok, drafter, _ = pair
    train = scale.clip_examples("drafter", drafter, world / "train", TINY, max_clips=1)
    cfg = TrainConfig(epochs=1, eval_every=1, val_clips=1, warmup_steps=1)
    model = scale.build_drafter(tok, TINY, seed=0)
    train_model(model, DrafterLM(model), train, train, cfg, tmp_path / "run", tok.pad_token_id, log=lambda *_: None)
    (ckpt,) = list((tmp_path / "run").glob("ckpt-*"))
    (ckpt / "optim.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="optim.safetensors is missing"):
        train_model(model, DrafterLM(model), train, train, cfg, tmp_path / "run", tok.pad_token_id,
                    log=lambda *_: None)
    # a trained pair whose model file is gone, or whose weights lack a layer, is refused at load time
    kw = dict(max_train_clips=1, max_val_clips=1, parallel=False, progress=False, log=lambda *_: None)
    rec = scale.train_pair(world, TINY, cfg, tmp_path / "models", **kw)
    target_file = Path(rec["dir"]) / "target" / "model.safetensors"
    from safetensors.torch import load_file, save_file
    weights = load_file(str(target_file))
    dropped = sorted(weights)[-1]
    save_file({k: v for k, v in weights.items() if k != dropped}, str(target_file))
    with pytest.raises(ValueError, match="does not fit the model"):
        scale.load_pair(rec["dir"])
    target_file.unlink()
    with pytest.raises(FileNotFoundError, match="target/model.safetensors is missing"):
        scale.load_pair(rec["dir"])


def test_initial_weights_follow_the_training_seed(pair):
    tok = pair[0]
    a, b, c = (scale.build_drafter(tok, TINY, seed=s) for s in (0, 0, 1))
    wa, wb, wc = (next(m.model.layers[0].parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_vision_pretraining_trains_the_vision_path_only_and_learns_the_facts(world, pair):
    from sdlib.models.train import VISION_PARTS, TargetLM, fact_labels, fact_vocabulary, pretrain_vision

    tok, _, target = pair
    train = scale.clip_examples("target", target, world / "train", TINY, max_clips=4)
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    info = pretrain_vision(TargetLM(target.model), train, TrainConfig(probe_steps=60, probe_lr=3e-3, fact_min_clips=1,
                                                                      precision="float32"), log=lambda *_: None)
    vocabulary = fact_vocabulary([ex.answers for ex in train], 1)
    assert info["facts"] == len(vocabulary) > 5 and info["steps"] == 60
    # the labels' own entropy is what a head that ignored the images could reach at best
    y = torch.stack([fact_labels(ex.answers, vocabulary) for ex in train])
    p = y.mean(0).clamp(1e-4, 1 - 1e-4)
    prior = float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())
    assert info["final_loss"] < 0.8 * prior, (info, prior)
    after = target.model.state_dict()
    moved = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert moved and all(any(part in k for part in VISION_PARTS) for k in moved)  # the language model is untouched
    for used in ("video_tower.embeddings.patch_embedding.weight", "video_tower.encoder.layers.0.mlp.fc1.weight",
                 "multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.weight"):
        assert f"model.{used}" in moved, used
    assert not any("image_tower" in k for k in moved)  # Video-LLaVA's image tower does not see videos


def test_a_trained_model_beats_a_unigram_model_by_a_wide_margin(world, pair, tmp_path):
    from sdlib.data.layout import load_clip, read_instructions
    from sdlib.models import quality

    tok, drafter, _ = pair
    train = scale.clip_examples("drafter", drafter, world / "train", TINY)
    val = scale.clip_examples("drafter", drafter, world / "val", TINY, max_clips=1)
    cfg = TrainConfig(epochs=4, eval_every=1000, val_clips=1, warmup_steps=5, lr=3e-3, seed=0)
    train_model(drafter.model, DrafterLM(drafter.model), train, val, cfg, tmp_path / "run", tok.pad_token_id,
                log=lambda *_: None)
    recs = read_instructions(world / "val")
    refs = [r["meta"]["answers_events"][QUESTIONS.index(r["conversations"][0]["value"])] for r in recs]
    nll = n = 0
    for rec, ref in zip(recs, refs):
        clip = load_clip(world / "val", rec)
        ids = tok(ref, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        nll += quality.reference_nll(drafter, drafter.prepare(rec["conversations"][0]["value"],
                                                                scale.drafter_visual(clip, TINY)), ids)
        n += len(ids)
    model_ppl = float(np.exp(nll / n))
    train_answers = [a for ex in train for a in ex.answers]
    unigram = quality.unigram_perplexity(tok, train_answers, refs)
    assert model_ppl < 0.5 * unigram, (model_ppl, unigram)
