"""Stage 03's extraction: teacher-forced pairs that are aligned (row t of both models predicts answer token t), the
original protocol, resumption (after a rerun and after SIGKILL of a real extraction process), split disjointness,
and a 2-process `accelerate launch` run equal to 1 process."""
import json

import pytest
import torch

from engine_fixtures import SIZES, random_pair, save_pair
from sdlib.align import extract
from sdlib.align.store import FeatureStore
from sdlib.data.layout import read_instructions
from sdlib.decoding.ar import greedy_decode
from sdlib.models import scale
from sdlib.models.pairing import pair_tokenizers
from sdlib.models.stage_pair import StagePair
from sdlib.world import QUESTIONS, dataset

SPEC = dataset.WorldSpec(name="t", n_scenes=12, seed=5)
CFG = extract.ExtractConfig(max_new_tokens=12, target_layers=(0, 1, 2), shard_size=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world") / "t"
    dataset.build_world(SPEC, root=root, progress=False, log=lambda *_: None)
    return root


@pytest.fixture(scope="module")
def pair():
    return random_pair(seed=7)


def stage_pair(pair, world, key="random-7") -> StagePair:
    drafter, target = pair
    return StagePair(drafter, target, pair_tokenizers(drafter.tokenizer, target.tokenizer, QUESTIONS), "scale", key,
                     lambda clip: scale.drafter_visual(clip, SIZES), world)


def first_requests(pair, world, n_clips=1):
    drafter, target = pair
    clips = extract.split_clips(world / "train", n_clips)
    return list(extract.clip_requests(world / "train", drafter, target, lambda c: scale.drafter_visual(c, SIZES),
                                      clips))


def test_rows_of_both_models_predict_the_same_answer_token(pair, world):
    drafter, target = pair
    clip = first_requests(pair, world)[0]
    _, _, t_in, d_in = clip.samples[0]
    s = extract.extract_request(drafter, target, t_in, d_in, CFG)
    tokens = s["tokens"]
    n = len(tokens)
    assert n >= 2 and s["target"].shape == (n, SIZES.target_hidden) and s["drafter"].shape == (n, SIZES.drafter_hidden)
    assert s["target_layers"].shape == (n, 3, SIZES.target_hidden) and s["fact"].shape == (n,)
    # the target's rows are its greedy decode: its head on row t chooses token t, and the tokens are greedy_decode's
    assert torch.equal(target.lm_head(s["target"].float()).argmax(-1), tokens)
    assert tokens.tolist() == greedy_decode(target, t_in, CFG.max_new_tokens).tokens
    # both models' rows equal one teacher-forced forward over prompt + answer (another code path: all at once),
    # read at the positions before each answer token: prompt_len - 1 + t
    for model, inputs, rows in ((target, t_in, s["target"]), (drafter, d_in, s["drafter"])):
        session = model.start(inputs)
        full = torch.cat([session.prompt_hidden[-1:], session.append(tokens[:-1]).hidden])
        assert torch.allclose(full, rows.float(), atol=2e-3, rtol=1e-2)  # float16 storage
    # the last kept layer index (2 = post-norm last layer of a 2-layer model) is the hidden state itself
    assert torch.allclose(s["target_layers"][:, 2].float(), s["target"].float())
    # the drafter's own choice at each row is its LM head on that row
    assert torch.equal(drafter.lm_head(s["drafter"].float()).argmax(-1), s["drafter_tokens"])


def test_independent_protocol_pairs_two_answers_by_position(pair, world):
    drafter, target = pair
    cfg = extract.ExtractConfig(protocol="independent", max_new_tokens=12)
    _, _, t_in, d_in = first_requests(pair, world)[0].samples[1]
    s = extract.extract_request(drafter, target, t_in, d_in, cfg)
    own_t = greedy_decode(target, t_in, 12).tokens
    own_d = greedy_decode(drafter, d_in, 12).tokens
    n = min(len(own_t), len(own_d))
    if n < extract.MIN_INDEPENDENT_ROWS:
        assert s is None
    else:
        assert s["tokens"].tolist() == own_t[:n] and s["drafter_tokens"].tolist() == own_d[:n]


def test_a_rerun_skips_stored_samples_and_splits_stay_disjoint(pair, world, tmp_path):
    sp = stage_pair(pair, world)
    reports = {}
    for split in ("train", "val", "test"):
        clips = extract.split_clips(world / split, 1)
        reports[split] = extract.run_extraction(sp, split, clips, tmp_path / split, CFG, "fp", progress=False)
        n_records = sum(1 for r in read_instructions(world / split) if r["clip_id"] in clips)
        assert reports[split]["samples"] == n_records == FeatureStore(tmp_path / split).n_samples
    again = extract.run_extraction(sp, "train", extract.split_clips(world / "train", 1), tmp_path / "train", CFG,
                                   "fp", progress=False)
    assert again["reused"] is True
    # resume below the finished marker: the writer skips what is stored
    (tmp_path / "train" / "COMPLETE.json").unlink()
    rep = extract.extract_split(sp.drafter, sp.target, extract.clip_requests(
        world / "train", sp.drafter, sp.target, sp.drafter_visual, extract.split_clips(world / "train", 1)),
        tmp_path / "train", CFG, "fp", progress=False,
        source=json.loads((tmp_path / "train" / "index.json").read_text())["config"]["source"])
    assert rep.samples == 0 and rep.skipped_done == reports["train"]["samples"]
    clips = {s: {i.rsplit("/", 1)[0] for i in FeatureStore(tmp_path / s).sample_ids} for s in ("train", "val", "test")}
    assert not (clips["train"] & clips["val"]) and not (clips["train"] & clips["test"]) and not (
        clips["val"] & clips["test"])


def install_stage_pair(pair, world, data_dir) -> StagePair:
    """The random pair and the small world as stage 01's output under ``data_dir``, so that a separate extraction
    process (``python -m sdlib.align.extract``) loads them as a stage would."""
    drafter, target = pair
    pair_dir = save_pair(drafter, target, data_dir / "models" / "scale-random7")
    meta = json.loads((pair_dir / "pair.json").read_text())
    (pair_dir / "pair.json").write_text(json.dumps({**meta, "key": "random7"}))
    (pair_dir / "DONE").write_text("")
    (data_dir / "results").mkdir(parents=True)
    (data_dir / "results" / "01_models.json").write_text(json.dumps(
        {"parameters": {}, "metrics": {"pair_dir": str(pair_dir),
                                       "stage_parameters": {"source": "scale", "dataset": "t"}}}))
    (data_dir / "world").mkdir()
    (data_dir / "world" / "t").symlink_to(world, target_is_directory=True)
    from sdlib.models.stage_pair import load_stage_pair

    return load_stage_pair()


def assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    assert sorted(a.sample_ids) == sorted(b.sample_ids) and len(set(b.sample_ids)) == len(b.sample_ids)
    for sid in a.sample_ids:
        x, y = a.load(sid), b.load(sid)
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), (sid, k)


@pytest.mark.slow
def test_a_killed_extraction_process_resumes_to_the_store_of_an_uninterrupted_run(pair, world, tmp_path, data_dir):
    """SIGKILL a real extraction process (the stage's command line, one rank) once a shard is on record, then rerun
    it: nothing is stored twice or half, at most the unflushed buffer is redone, and the result equals one run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sp = install_stage_pair(pair, world, data_dir)
    clips = extract.split_clips(world / "train", 6)
    one = extract.run_extraction(sp, "train", clips, tmp_path / "one", CFG, "fp", progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, *extract.write_job(out, world / "train", clips, CFG, "fp",
                                              extract.extraction_source(sp, "train", clips))]
    env = {**os.environ, "SDLIB_DATA_DIR": str(data_dir)}

    def on_record() -> list[str]:
        index = out / "index.r00.json"
        return [s for e in json.loads(index.read_text())["shards"] for s in e["sample_ids"]] if index.is_file() else []

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not on_record() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"the extraction ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = on_record()
    assert 0 < len(first) < one["samples"], "killed mid-run, with at least one shard on record"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads(next(line for line in rerun.stdout.splitlines() if line.startswith('{"rank"')))
    assert report["skipped_done"] == len(first) and report["samples"] == one["samples"] - len(first)
    assert_same_store(FeatureStore(tmp_path / "one"), FeatureStore(out))


@pytest.mark.slow
def test_two_accelerate_processes_store_what_one_process_stores(pair, world, tmp_path, data_dir):
    sp = install_stage_pair(pair, world, data_dir)
    clips = extract.split_clips(world / "train", 3)
    one = extract.run_extraction(sp, "train", clips, tmp_path / "one", CFG, "fp", progress=False)
    two = extract.run_extraction(sp, "train", clips, tmp_path / "two", CFG, "fp", processes=2)
    assert one["samples"] == two["samples"] > 0 and two["processes"] == 2
    assert {p.name.split("-")[1] for p in (tmp_path / "two").glob("shard-*.safetensors")} == {"r00", "r01"}
    assert_same_store(FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "two"))


def test_l6_lora_reads_the_stored_rows_and_trains_only_its_own_weights(world, tmp_path):
    from sdlib.align import lora
    from sdlib.align.train import FrozenTarget

    drafter, target = random_pair(seed=11)
    sp = stage_pair((drafter, target), world, key="random-11")
    for split in ("train", "val"):
        extract.run_extraction(sp, split, extract.split_clips(world / split, 1), tmp_path / split, CFG, "fp",
                               progress=False)
    train, val = FeatureStore(tmp_path / "train"), FeatureStore(tmp_path / "val")
    ex = lora.lora_examples(drafter, world / "train", sp.drafter_visual, train)
    cfg = lora.LoraConfig(r=4, alpha=8, epochs=2, accumulate=2)
    base = {k: v.clone() for k, v in drafter.model.state_dict().items()}
    proj = lora.attach_lora(drafter, cfg, SIZES.target_hidden)
    # LoRA starts as the identity (B = 0): the grad-enabled forward reads exactly the stored rows (no off-by-one)
    with torch.no_grad():
        for inputs, visual, s in ex[:3]:
            rows = lora.drafter_rows(drafter, inputs, s["tokens"], visual)
            assert torch.allclose(rows, s["drafter"].float(), atol=2e-3, rtol=1e-2)
    export = tmp_path / "head.safetensors"
    extract.export_lm_head(target, export)
    head = FrozenTarget.load(export)
    vex = lora.lora_examples(drafter, world / "val", sp.drafter_visual, val)
    res = lora.train_lora(drafter, proj, ex, vex, head, cfg, tmp_path / "l6.safetensors", progress=False,
                          log=lambda *_: None)
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]
    after = drafter.model.state_dict()
    changed = {k for k in base if k in after and not torch.equal(base[k], after[k])}
    assert not changed  # the base weights are frozen (LoRA tensors are new keys)
    assert any(float(p.detach().abs().sum()) > 0 for n, p in lora.lora_parameters(drafter).items() if "lora_B" in n)
    fresh, _ = random_pair(seed=11)
    proj2 = lora.load_lora(fresh, tmp_path / "l6.safetensors", SIZES.target_hidden)
    a = lora.lora_rows(drafter, proj, ex[:2])
    b = lora.lora_rows(fresh, proj2, ex[:2])
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))


def test_a_launch_past_its_time_limit_is_killed_with_its_ranks_and_says_how_far_it_got(tmp_path):
    """The accelerate launcher and its ranks run in their own session; past ``timeout_s`` all are killed and the
    error names the split, the limit and the complete shards a rerun resumes from."""
    import time

    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"stopped after 0 s: 0 shard\(s\) were complete in .*a rerun resumes"):
        extract._launch(tmp_path / "split", ["c0"], tmp_path / "out", CFG, "fp", {"kind": "none"}, 2, timeout_s=0.3)
    assert time.perf_counter() - t0 < 30
