"""The feature store (sdlib.align.store): exact round trip, sample checks, corruption and staleness detection,
resume after a clean stop, a simulated crash and real kill -9s, several ranks, and a stream that is deterministic,
complete, stops its thread and holds at most about two shards in memory."""
import hashlib
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import store_worker  # the kill test's writer process; its samples are the expectation
from sdlib.align.store import (OFFSETS_KEY, CorruptShardError, FeatureStore, ShardWriter, StaleStoreError,
                               StoreError, merge_manifests)

TESTS = Path(__file__).resolve().parent

CONFIG = {"layers": (1, 3), "model": "tiny"}
FP = "code-fp-1"


def make_sample(i: int) -> dict[str, torch.Tensor]:
    """Sample ``i``: ``n = 1 + (5 i) % 9`` positions, float16 / float32 / int64 keys, a 2-d trailing shape."""
    g = torch.Generator().manual_seed(i)
    n = 1 + (5 * i) % 9
    return {"tokens": torch.randint(0, 30000, (n,), generator=g),  # [n] int64
            "drafter": torch.randn(n, 6, generator=g).half(),  # [n, 6] float16
            "target": torch.randn(n, 4, generator=g),  # [n, 4] float32
            "target_layers": torch.randn(n, 2, 4, generator=g).half()}  # [n, 2, 4] float16


def sid(i: int) -> str:
    return f"clip{i:03d}/q{i % 10}"


def write(root, ids, *, shard_size=5, rank=0, fingerprint=FP, config=CONFIG, **kw):
    with ShardWriter(root, config=config, fingerprint=fingerprint, shard_size=shard_size, rank=rank, **kw) as w:
        for i in ids:
            w.add(sid(i), make_sample(i))


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip_23_samples_in_5_shards(tmp_path):
    write(tmp_path, range(23), shard_size=5)
    merged = merge_manifests(tmp_path)
    lengths = [make_sample(i)["tokens"].shape[0] for i in range(23)]
    assert merged["format"] == 1 and merged["fingerprint"] == FP
    assert merged["config"] == {"layers": [1, 3], "model": "tiny"}
    assert merged["keys"] == {"tokens": {"dtype": "int64", "trailing_shape": []},
                              "drafter": {"dtype": "float16", "trailing_shape": [6]},
                              "target": {"dtype": "float32", "trailing_shape": [4]},
                              "target_layers": {"dtype": "float16", "trailing_shape": [2, 4]}}
    assert merged["n_samples"] == 23 and merged["n_rows"] == sum(lengths) == 109
    assert [s["file"] for s in merged["shards"]] == [f"shard-r00-0000{k}.safetensors" for k in range(5)]
    assert [len(s["sample_ids"]) for s in merged["shards"]] == [5, 5, 5, 5, 3]
    assert [s["rows"] for s in merged["shards"]] == [sum(lengths[k:k + 5]) for k in range(0, 23, 5)]
    for s in merged["shards"]:
        data = (tmp_path / s["file"]).read_bytes()
        assert s["bytes"] == len(data) and s["sha256"] == hashlib.sha256(data).hexdigest()
    assert json.loads((tmp_path / "index.json").read_text()) == merged
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []

    # the shards are plain safetensors: the library's own reader sees the concatenation and the offsets
    with safe_open(str(tmp_path / "shard-r00-00001.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["sample_ids"]) == [sid(i) for i in range(5, 10)]
        offsets = f.get_tensor(OFFSETS_KEY)
        assert offsets.tolist() == [0, *torch.tensor(lengths[5:10]).cumsum(0).tolist()]
        assert torch.equal(f.get_tensor("target")[offsets[2]:offsets[3]], make_sample(7)["target"])

    store = FeatureStore(tmp_path)
    store.verify()
    assert store.sample_ids == [sid(i) for i in range(23)]
    assert (store.n_samples, store.n_rows, store.n_shards, store.fingerprint) == (23, 109, 5, FP)
    assert store.keys == merged["keys"] and store.config == merged["config"]
    for i in range(23):
        assert_same(store.load(sid(i)), make_sample(i))
    assert [s for s, _ in store.shard(4)] == [sid(i) for i in range(20, 23)]
    for s, tensors in store.shard(4):
        assert_same(tensors, make_sample(int(s[4:7])))

    chosen = [17, 2, 9]
    tensors, offsets = store.concat(keys=["target", "tokens"], sample_ids=[sid(i) for i in chosen])
    assert set(tensors) == {"target", "tokens"}
    assert offsets.tolist() == [0, *torch.tensor([lengths[i] for i in chosen]).cumsum(0).tolist()]
    for j, i in enumerate(chosen):
        assert torch.equal(tensors["target"][offsets[j]:offsets[j + 1]], make_sample(i)["target"])
        assert torch.equal(tensors["tokens"][offsets[j]:offsets[j + 1]], make_sample(i)["tokens"])
    everything, offsets = store.concat()
    assert everything["target_layers"].shape == (109, 2, 4) and offsets[-1] == 109
    assert torch.equal(everything["drafter"], torch.cat([make_sample(i)["drafter"] for i in range(23)]))

    streamed = dict(store.stream(seed=3))
    assert sorted(streamed) == sorted(store.sample_ids)
    for i in range(23):
        assert_same(streamed[sid(i)], make_sample(i))


def test_fingerprint_and_config_checked_by_the_reader(tmp_path):
    write(tmp_path, range(3))
    merge_manifests(tmp_path)
    assert FeatureStore(tmp_path, fingerprint=FP, config=CONFIG).n_samples == 3
    with pytest.raises(StaleStoreError, match="code-fp-1.*expected 'other'"):
        FeatureStore(tmp_path, fingerprint="other")
    with pytest.raises(StaleStoreError, match="config"):
        FeatureStore(tmp_path, config={**CONFIG, "model": "big"})
    with pytest.raises(KeyError, match="no sample 'nope'"):
        FeatureStore(tmp_path).load("nope")


def test_missing_manifest_says_run_extraction_first(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "index.json")) + ".*run extraction first"):
        FeatureStore(tmp_path)
    with pytest.raises(StoreError, match="no rank manifests.*run extraction first"):
        merge_manifests(tmp_path)


def _bad(key, value):
    def edit(s):
        s = dict(s)
        if value is None:
            del s[key]
        else:
            s[key] = value
        return s
    return edit


@pytest.mark.parametrize("edit,message", [
    (_bad("target_layers", None), r"keys \['drafter', 'target', 'tokens'\].*missing \['target_layers'\]"),
    (_bad("extra", torch.zeros(4)), r"unexpected \['extra'\]"),
    (lambda s: {**s, "drafter": s["drafter"].float()}, r"key 'drafter': dtype float32, .* have float16"),
    (lambda s: {**s, "target": torch.zeros(4, 5)}, r"key 'target': shape \[n, \*\[5\]\], .* \[n, \*\[4\]\]"),
    (lambda s: {**s, "tokens": torch.zeros(3, dtype=torch.int64)}, r"tensors disagree on n.*'tokens': 3"),
    (lambda s: {**s, "__offsets__": torch.zeros(4)}, r"key '__offsets__' is not allowed"),
    (lambda s: {k: v[:0] for k, v in s.items()}, r"n >= 1"),
    (lambda s: {**s, "tokens": torch.zeros(4, dtype=torch.complex64)}, r"dtype torch.complex64 cannot be stored"),
], ids=["missing-key", "extra-key", "dtype", "trailing-shape", "unequal-n", "reserved-key", "no-rows", "bad-dtype"])
def test_add_rejects_a_sample_unlike_the_first(tmp_path, edit, message):
    base = make_sample(3)  # n = 7
    assert base["tokens"].shape[0] == 7
    good = {k: v[:4] for k, v in base.items()}
    with ShardWriter(tmp_path, config=CONFIG, fingerprint=FP, shard_size=2) as w:
        w.add("first", make_sample(0))
        with pytest.raises(ValueError, match=r"sample 'bad'.*" + message):
            w.add("bad", edit(good))
        w.add("good", good)  # a rejected sample leaves the writer usable, and nothing of it is stored
        assert w.done_ids == {"first", "good"}
        w.add("third", make_sample(5))
        with pytest.raises(ValueError, match=r"sample 'third' was already added"):
            w.add("third", make_sample(5))
        with pytest.raises(ValueError, match=r"sample 'first' is already stored"):
            w.add("first", make_sample(0))
    merge_manifests(tmp_path)
    assert FeatureStore(tmp_path).sample_ids == ["first", "good", "third"]


def test_keys_are_checked_against_the_stored_samples_after_reopening(tmp_path):
    write(tmp_path, range(2), shard_size=2)
    with ShardWriter(tmp_path, config=CONFIG, fingerprint=FP, shard_size=2) as w:
        with pytest.raises(ValueError, match=r"sample 'clip009/q9', key 'target': dtype float16"):
            w.add(sid(9), {**make_sample(9), "target": make_sample(9)["target"].half()})


def test_corrupt_shard_is_named_by_verify_load_and_stream(tmp_path):
    write(tmp_path, range(12), shard_size=4)
    merge_manifests(tmp_path)
    bad = tmp_path / "shard-r00-00001.safetensors"
    flip_byte(bad, bad.stat().st_size - 10)  # inside the tensor data
    store = FeatureStore(tmp_path)
    with pytest.raises(CorruptShardError, match=f"shard {re.escape(str(bad))}: sha256"):
        store.verify()
    with pytest.raises(CorruptShardError, match=re.escape(str(bad))):
        store.load(sid(5))
    assert_same(store.load(sid(9)), make_sample(9))  # the other shards still read
    baseline = threading.active_count()
    for prefetch in (True, False):
        got = []
        with pytest.raises(CorruptShardError, match=re.escape(str(bad))):
            for s, _ in store.stream(seed=0, prefetch=prefetch):
                got.append(s)
        assert not set(got) & {sid(i) for i in range(4, 8)}, "no row of the corrupt shard is ever yielded"
    assert threading.active_count() == baseline
    bad.unlink()
    with pytest.raises(CorruptShardError, match=f"shard {re.escape(str(bad))}: listed in .* missing"):
        store.verify()


def test_stale_store_refused_unless_overwrite(tmp_path):
    write(tmp_path, range(7), shard_size=3)
    merge_manifests(tmp_path)
    with pytest.raises(StaleStoreError, match=r"index.r00.json: made with another fingerprint 'code-fp-1'.*fp-2"):
        ShardWriter(tmp_path, config=CONFIG, fingerprint="code-fp-2", shard_size=3)
    with pytest.raises(StaleStoreError, match=r"config"):
        ShardWriter(tmp_path, config={**CONFIG, "model": "big"}, fingerprint=FP, shard_size=3)
    assert len(FeatureStore(tmp_path).sample_ids) == 7  # refusing touched nothing
    with ShardWriter(tmp_path, config=CONFIG, fingerprint="code-fp-2", shard_size=3, overwrite=True) as w:
        assert w.done_ids == set()
        assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == []
        with pytest.raises(FileNotFoundError, match="run extraction first"):
            FeatureStore(tmp_path)  # the merged index listed the removed shards
        for i in range(20, 24):
            w.add(sid(i), make_sample(i))
    merge_manifests(tmp_path)
    store = FeatureStore(tmp_path, fingerprint="code-fp-2")
    assert store.sample_ids == [sid(i) for i in range(20, 24)]
    assert [store.shard_path(k).name for k in range(store.n_shards)] == ["shard-r00-00000.safetensors",
                                                                         "shard-r00-00001.safetensors"]


def test_resume_after_a_clean_stop_and_after_an_exception(tmp_path):
    write(tmp_path, range(12), shard_size=5)
    with ShardWriter(tmp_path, config=CONFIG, fingerprint=FP, shard_size=5) as w:
        assert w.done_ids == {sid(i) for i in range(12)}
        with pytest.raises(RuntimeError, match="model crashed"):
            with w:
                for i in range(12, 15):
                    w.add(sid(i), make_sample(i))
                raise RuntimeError("model crashed")
    with ShardWriter(tmp_path, config=CONFIG, fingerprint=FP, shard_size=5) as w:
        assert w.done_ids == {sid(i) for i in range(15)}, "samples buffered before an exception are kept"
        for i in range(23):
            if sid(i) not in w.done_ids:
                w.add(sid(i), make_sample(i))
    merged = merge_manifests(tmp_path)
    assert [len(s["sample_ids"]) for s in merged["shards"]] == [5, 5, 2, 3, 5, 3]
    store = FeatureStore(tmp_path)
    assert sorted(store.sample_ids) == [sid(i) for i in range(23)] and store.n_samples == 23
    for i in range(23):
        assert_same(store.load(sid(i)), make_sample(i))


def test_reopen_removes_orphan_shard_and_temp_files(tmp_path):
    write(tmp_path, range(12), shard_size=5)  # shards of 5, 5, 2
    manifest_path = tmp_path / "index.r00.json"
    manifest = json.loads(manifest_path.read_text())
    orphan = tmp_path / manifest["shards"][-1]["file"]
    # the state a kill leaves between the last shard's rename and its manifest's rename, mid-write of the next shard
    manifest["shards"].pop()
    manifest["n_samples"], manifest["n_rows"] = 10, sum(s["rows"] for s in manifest["shards"])
    manifest_path.write_text(json.dumps(manifest))
    own_tmps = [tmp_path / "shard-r00-00003.safetensors.tmp", tmp_path / "index.r00.json.tmp"]
    other_rank_tmp = tmp_path / "shard-r01-00000.safetensors.tmp"  # a live rank 1 may be writing it right now
    for p in [*own_tmps, other_rank_tmp]:
        p.write_bytes(b"half a shard")
    assert orphan.exists()
    with ShardWriter(tmp_path, config=CONFIG, fingerprint=FP, shard_size=5) as w:
        assert not orphan.exists() and not any(p.exists() for p in own_tmps)
        assert other_rank_tmp.exists()
        assert w.done_ids == {sid(i) for i in range(10)}
        for i in range(10, 23):
            w.add(sid(i), make_sample(i))
    other_rank_tmp.unlink()
    merged = merge_manifests(tmp_path)
    ids = [s for shard in merged["shards"] for s in shard["sample_ids"]]
    assert sorted(ids) == [sid(i) for i in range(23)] and len(ids) == 23
    on_disk = sorted(p.name for p in tmp_path.glob("shard-*"))
    assert on_disk == sorted(s["file"] for s in merged["shards"])
    store = FeatureStore(tmp_path)
    store.verify()
    for i in (10, 11, 22):
        assert_same(store.load(sid(i)), make_sample(i))


def test_two_ranks_merge_into_the_union(tmp_path):
    kw = {"config": CONFIG, "fingerprint": FP, "shard_size": 3}
    with ShardWriter(tmp_path, rank=0, **kw) as w0, ShardWriter(tmp_path, rank=1, **kw) as w1:
        with pytest.raises(StoreError, match="index.r01.lock: another writer of rank 1"):
            ShardWriter(tmp_path, rank=1, **kw)
        for i in range(14):  # interleaved, as two processes would
            (w0 if i % 2 == 0 else w1).add(sid(i), make_sample(i))
    with pytest.raises(StoreError, match=r"no manifest from ranks \[2\] of world size 3"):
        merge_manifests(tmp_path, world_size=3)
    merged = merge_manifests(tmp_path, world_size=2)
    assert merged["ranks"] == [0, 1] and merged["n_samples"] == 14
    assert [s["file"][:9] for s in merged["shards"]] == ["shard-r00"] * 3 + ["shard-r01"] * 3
    store = FeatureStore(tmp_path)
    assert sorted(store.sample_ids) == [sid(i) for i in range(14)]
    for i in range(14):
        assert_same(store.load(sid(i)), make_sample(i))


def test_merge_refuses_a_sample_stored_twice_or_disagreeing_ranks(tmp_path):
    write(tmp_path, [0, 1, 2, 3], rank=0, shard_size=2)
    write(tmp_path, [4, 3, 5], rank=1, shard_size=2)
    with pytest.raises(StoreError, match=r"sample 'clip003/q3' is stored twice, in shard-r00-00001.safetensors and "
                                         r"shard-r01-00000.safetensors"):
        merge_manifests(tmp_path)
    write(tmp_path, [5], rank=1, shard_size=2, fingerprint="code-fp-2", overwrite=True)
    with pytest.raises(StaleStoreError, match=r"index.r01.json has fingerprint 'code-fp-2', index.r00.json has "
                                              r"'code-fp-1'"):
        merge_manifests(tmp_path)


def test_stream_is_seeded_complete_and_shard_by_shard(tmp_path):
    write(tmp_path, range(23), shard_size=5)
    merge_manifests(tmp_path)
    store = FeatureStore(tmp_path)
    order = [s for s, _ in store.stream(seed=7)]
    assert order == [s for s, _ in store.stream(seed=7)] == [s for s, _ in store.stream(seed=7, prefetch=False)]
    assert sorted(order) == sorted(store.sample_ids) and len(order) == 23
    assert order != [s for s, _ in store.stream(seed=8)]
    assert order != store.sample_ids
    assert [s for s, _ in store.stream(shuffle=False)] == store.sample_ids
    stored = [e["sample_ids"] for e in json.loads((tmp_path / "index.json").read_text())["shards"]]
    shard_of = {s: k for k, ids in enumerate(stored) for s in ids}
    visits = [shard_of[s] for s in order]
    blocks = [k for n, k in enumerate(visits) if n == 0 or visits[n - 1] != k]
    assert sorted(blocks) == [0, 1, 2, 3, 4], "each shard is read once and its samples come together"
    assert blocks != [0, 1, 2, 3, 4], "the shard order is shuffled"
    within = [[s for s in order if shard_of[s] == k] for k in range(5)]
    assert sum(within[k] != stored[k] for k in range(5)) >= 3, "samples within a shard are shuffled"

    subset = [sid(i) for i in (21, 3, 4, 13)]
    got = dict(store.stream(seed=1, sample_ids=subset))
    assert sorted(got) == sorted(subset)
    assert_same(got[sid(13)], make_sample(13))
    assert {k for k, _ in store.plan(sample_ids=subset)} == {0, 2, 4}
    with pytest.raises(KeyError, match="no sample 'nope'"):
        store.stream(sample_ids=["nope"])


def test_stream_closed_early_stops_its_thread(tmp_path):
    write(tmp_path, range(23), shard_size=3)  # 8 shards: the producer is blocked when the consumer stops
    merge_manifests(tmp_path)
    store = FeatureStore(tmp_path)
    baseline = threading.active_count()
    gen = store.stream(seed=0)
    for _ in range(4):
        next(gen)
    assert threading.active_count() == baseline + 1
    gen.close()
    assert threading.active_count() == baseline

    for n, _ in enumerate(store.stream(seed=1)):  # break, then drop the generator: its finally stops the thread
        if n == 5:
            break
    deadline = time.time() + 5
    while threading.active_count() > baseline and time.time() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == baseline


class CountingStore(FeatureStore):
    """Counts the shards the stream machinery holds: a weak reference to each shard's tensors as it is read."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.live: weakref.WeakSet = weakref.WeakSet()
        self.reads, self.most_live = 0, 0

    def _read_shard(self, i):
        ids, tensors, offsets = super()._read_shard(i)
        self.live.add(tensors["target"])  # the shard-wide tensor: the yielded samples are views, not it
        self.reads += 1
        self.most_live = max(self.most_live, len(self.live))
        return ids, tensors, offsets


def test_stream_holds_at_most_two_shards(tmp_path):
    write(tmp_path, range(23), shard_size=3)  # 8 shards
    merge_manifests(tmp_path)
    store = CountingStore(tmp_path)
    kept = []
    for n, (s, tensors) in enumerate(store.stream(seed=2)):
        kept.append(tensors["target"])  # views the caller keeps do not count: they pin memory, not shards
        if n == 0:
            time.sleep(0.2)  # the prefetch thread reads the next shard meanwhile
    assert store.reads == 8 and len(kept) == 23
    assert store.most_live == 2, "the shard consumed and the one read ahead, never a third"


# -- a real process, killed with SIGKILL -------------------------------------------------------------------------------
class Worker:
    """tests/store_worker.py as a subprocess, its stdout lines collected by a thread (so waits can time out)."""

    def __init__(self, root: Path, n: int, shard_size: int) -> None:
        self.proc = subprocess.Popen([sys.executable, str(TESTS / "store_worker.py"), str(root), str(n),
                                      str(shard_size)], stdout=subprocess.PIPE, text=True, cwd=TESTS.parent)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, prefix: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while sum(line.startswith(prefix) for line in self.seen) < count:
            line = self.lines.get(timeout=max(0.01, deadline - time.time()))
            assert line is not None, f"worker exited ({self.proc.wait()}) before {count} x {prefix!r}: {self.seen}"
            self.seen.append(line)

    def kill(self) -> list[str]:
        """SIGKILL; returns every sample id it announced before it died."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.reader.join(10)
        while (line := self.lines.get()) is not None:
            self.seen.append(line)
        return [line.split()[1] for line in self.seen if line.startswith("adding ")]


def stored_ids(root: Path) -> list[str]:
    manifest = json.loads((root / "index.r00.json").read_text())
    return [s for shard in manifest["shards"] for s in shard["sample_ids"]]


@pytest.mark.slow
def test_killed_writer_resumes_without_loss_or_duplicates(tmp_path):
    n, shard_size = 60, 4
    root = tmp_path / "store"
    expected = [store_worker.sample_id(i) for i in range(n)]

    worker = Worker(root, n, shard_size)  # kill 1: once two shards are on record
    worker.wait_for("shard", 2)
    announced = worker.kill()
    first = stored_ids(root)
    assert 2 * shard_size <= len(first) < n
    assert len(set(first)) == len(first) and set(first) <= set(announced)
    assert len(announced) - len(first) <= shard_size, "at most the unflushed buffer is lost"

    worker = Worker(root, n, shard_size)  # kill 2: at a moment unrelated to the flushes
    worker.wait_for("open")
    assert worker.seen[-1] == f"open done={len(first)}"
    worker.wait_for("shard")
    time.sleep(0.11)  # ~5 samples later: mid-buffer or mid-flush, as the timing falls
    announced = worker.kill()
    second = stored_ids(root)
    assert set(first) < set(second) and len(second) < n, "the second run made progress and was stopped mid-way"
    assert len(set(second)) == len(second) and set(second) <= set(first) | set(announced)
    assert len(set(first) | set(announced)) - len(second) <= shard_size

    worker = Worker(root, n, shard_size)
    worker.wait_for("finished")
    assert worker.proc.wait(30) == 0
    merged = merge_manifests(root)
    ids = [s for shard in merged["shards"] for s in shard["sample_ids"]]
    assert sorted(ids) == expected and len(ids) == n
    assert sorted(p.name for p in root.glob("shard-*")) == sorted(s["file"] for s in merged["shards"])
    store = FeatureStore(root)
    store.verify()
    for s, tensors in store.stream(seed=0):
        assert_same(tensors, store_worker.sample(int(s.split("-")[1])))


# -- memory while streaming --------------------------------------------------------------------------------------------
# Peak RSS is this process's VmHWM, reset after the imports. Not getrusage's ru_maxrss: Linux carries the parent's
# peak across fork + exec into it (here: pytest's ~300 MB), which would hide the stream's own peak.
MEASURE = r"""
import json, sys
import torch
from sdlib.align.store import FeatureStore


def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])


store = FeatureStore(sys.argv[1])
ids = json.loads(open(sys.argv[2]).read())
torch.zeros(1000).sum()  # start torch's pools before the baseline
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS (without it the import peak counts: a stricter test)
except OSError:
    pass
before = status_kb("VmRSS")
total, count = 0.0, 0
for sample_id, t in store.stream(seed=0, sample_ids=ids):
    total += float(t["target"].sum()) + float(t["drafter"].float().sum()) + float(t["tokens"].sum())
    count += 1
peak = status_kb("VmHWM")
print(json.dumps({"samples": count, "growth_mb": (peak - before) / 1024, "total": total}))
"""


def n_rows(i: int) -> int:
    return 70 + (i * 13) % 31  # ~85 rows x 6 KiB: shards of ~8 MB


@pytest.mark.slow
def test_stream_memory_is_bounded_by_two_shards(tmp_path):
    per_shard, hidden = 16, 1024
    root = tmp_path / "store"
    drafter = torch.full((100, hidden), 1.0, dtype=torch.float16)  # the writer copies what it is given: slices
    target = torch.full((100, hidden), 0.5)  # of one tensor make the samples (page faults are slow on these VMs)
    with ShardWriter(root, config={}, fingerprint=FP, shard_size=per_shard) as w:
        for i in range(24 * per_shard):
            w.add(f"s{i:04d}", {"tokens": torch.full((n_rows(i),), i, dtype=torch.int64),  # [n]
                                "drafter": drafter[:n_rows(i)],  # [n, hidden]
                                "target": target[:n_rows(i)]})  # [n, hidden]
    merged = merge_manifests(root)
    shard_mb = max(s["bytes"] for s in merged["shards"]) / 2**20
    assert 7 < shard_mb < 10

    def measure(shards: int) -> dict:
        """Stream the first ``shards`` shards in a fresh process: samples seen, checksum, peak RSS growth."""
        ids = [s for entry in merged["shards"][:shards] for s in entry["sample_ids"]]
        (tmp_path / "ids.json").write_text(json.dumps(ids))
        out = subprocess.run([sys.executable, "-c", MEASURE, str(root), str(tmp_path / "ids.json")],
                             capture_output=True, text=True, check=True, cwd=TESTS.parent)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["samples"] == len(ids) == shards * per_shard
        indices = [int(s[1:]) for s in ids]
        expected = sum(n_rows(i) * (hidden * 1.5 + i) for i in indices)  # every row of every sample was read
        assert result["total"] == pytest.approx(expected)
        return result

    one, four = measure(6), measure(24)
    print(f"peak RSS growth while streaming: 1x (6 shards) {one['growth_mb']:.1f} MB, "
          f"4x (24 shards) {four['growth_mb']:.1f} MB; shard {shard_mb:.1f} MB")
    assert four["growth_mb"] < 1.5 * one["growth_mb"]
    assert four["growth_mb"] < 3 * shard_mb + 8
