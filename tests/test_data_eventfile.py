"""Event arrays, .npz event files, and the restricted loader for EventGPT's pickled .npy files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from sdlib.data.errors import DataError
from sdlib.data.eventfile import (EVENT_DTYPE, events_from_dict, load_eventgpt_npy, make_events, read_events_npz,
                                  validate_events, write_events_npz)


def _events(rng: np.random.Generator, n: int = 500, hw: tuple[int, int] = (48, 64)) -> np.ndarray:
    t = np.sort(rng.integers(1_000, 51_000, n))
    return make_events(rng.integers(0, hw[1], n), rng.integers(0, hw[0], n), t, rng.integers(0, 2, n))


def test_event_dtype_fields() -> None:
    assert EVENT_DTYPE.names == ("x", "y", "t", "p")
    assert [EVENT_DTYPE[k] for k in EVENT_DTYPE.names] == [np.dtype(np.uint16), np.dtype(np.uint16),
                                                            np.dtype(np.int64), np.dtype(np.uint8)]


def test_validate_events_rejects_each_bad_input_naming_source_and_index() -> None:
    ev = make_events([1, 2, 3, 4], [1, 1, 1, 1], [10, 20, 15, 30], [0, 1, 0, 1])
    with pytest.raises(DataError, match=r"cam\.h5: t is not sorted at index 2 \(t\[1\]=20 > t\[2\]=15\)"):
        validate_events(ev, (8, 8), "cam.h5")
    ev = make_events([1, 8, 3], [1, 1, 1], [1, 2, 3], [0, 1, 0])
    with pytest.raises(DataError, match=r"cam\.h5: x=8 at index 1 is outside the sensor \(8x8, HxW\); "
                                        r"expected 0 <= x < 8"):
        validate_events(ev, (8, 8), "cam.h5")
    ev = make_events([1, 1, 1], [1, 1, 9], [1, 2, 3], [0, 1, 0])
    with pytest.raises(DataError, match=r"y=9 at index 2 .* expected 0 <= y < 8"):
        validate_events(ev, (8, 8), "cam.h5")
    ev = make_events([1, 1], [1, 1], [1, 2], [0, 2])
    with pytest.raises(DataError, match=r"p=2 at index 1; expected polarity 0 \(OFF\) or 1 \(ON\)"):
        validate_events(ev, (8, 8), "cam.h5")
    # index_offset reports the position in the whole file
    ev = make_events([1, 2], [1, 1], [5, 4], [0, 0])
    with pytest.raises(DataError, match=r"not sorted at index 1001"):
        validate_events(ev, None, "cam.h5", index_offset=1000)
    with pytest.raises(DataError, match="expected a structured array"):
        validate_events(np.zeros(3), (8, 8), "cam.h5")
    # an empty stream is valid
    assert validate_events(np.empty(0, EVENT_DTYPE), (8, 8), "cam.h5").size == 0


def test_npz_roundtrip_is_exact_and_needs_no_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ev = _events(rng)
    path = write_events_npz(tmp_path / "a" / "w.npz", ev, time_start=1_000, time_end=51_000, sensor_hw=(48, 64),
                            meta={"clip_id": "s/000001", "n": 3})
    with np.load(path, allow_pickle=False) as npz:  # plain arrays only
        assert set(npz.files) == {"x", "y", "t", "p", "time_start", "time_end", "sensor_hw", "meta_json"}
        assert npz["t"].dtype == np.int64 and npz["x"].dtype == np.uint16
    win = read_events_npz(path)
    np.testing.assert_array_equal(win.events, ev)
    assert win.events.dtype == EVENT_DTYPE
    assert (win.time_start, win.time_end, win.sensor_hw) == (1_000, 51_000, (48, 64))
    assert win.meta == {"clip_id": "s/000001", "n": 3}
    assert not list(tmp_path.rglob(".*tmp*"))  # no temp file left behind
    # an empty window round-trips as zero events
    empty = write_events_npz(tmp_path / "e.npz", np.empty(0, EVENT_DTYPE), time_start=5, time_end=9,
                             sensor_hw=(48, 64))
    assert read_events_npz(empty).events.size == 0
    # identical content gives identical bytes (reproducible content hashes)
    again = write_events_npz(tmp_path / "b.npz", ev, time_start=1_000, time_end=51_000, sensor_hw=(48, 64),
                             meta={"n": 3, "clip_id": "s/000001"})
    assert again.read_bytes() == path.read_bytes()


def test_npz_writer_refuses_events_outside_window(tmp_path: Path) -> None:
    ev = make_events([1, 2], [1, 1], [100, 200], [0, 1])
    with pytest.raises(DataError, match=r"w\.npz: events span \[100, 200\] µs, expected all inside the window "
                                        r"\[100, 200\)"):
        write_events_npz(tmp_path / "w.npz", ev, time_start=100, time_end=200, sensor_hw=(4, 4))
    assert not (tmp_path / "w.npz").exists()


def test_truncated_or_foreign_npz_gives_data_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = write_events_npz(tmp_path / "w.npz", _events(rng), time_start=0, time_end=60_000, sensor_hw=(48, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"w\.npz: cannot be read as an \.npz event file"):
        read_events_npz(path)
    np.savez(tmp_path / "other.npz", a=np.arange(3))
    with pytest.raises(DataError, match=r"other\.npz: missing arrays \['x', 'y', 't', 'p', 'time_start'"):
        read_events_npz(tmp_path / "other.npz")
    with pytest.raises(DataError, match="not found"):
        read_events_npz(tmp_path / "nope.npz")


def test_eventgpt_npy_dict_is_loaded_without_trusting_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 1000
    d = {"x": rng.integers(0, 640, n).astype(np.uint16), "y": rng.integers(0, 480, n).astype(np.uint16),
         "t": np.sort(rng.integers(0, 49_596, n)).astype(np.uint16), "p": rng.integers(0, 2, n).astype(np.uint8)}
    path = tmp_path / "sample1.npy"
    np.save(path, d, allow_pickle=True)  # exactly how EventGPT's files are made
    got = load_eventgpt_npy(path)
    assert set(got) == {"x", "y", "t", "p"}
    for k in d:
        np.testing.assert_array_equal(got[k], d[k])
        assert got[k].dtype == d[k].dtype
    ev = events_from_dict(got, path, sensor_hw=(480, 640), t_offset=1_000_000)
    assert ev.dtype == EVENT_DTYPE and ev.size == n
    np.testing.assert_array_equal(ev["t"], d["t"].astype(np.int64) + 1_000_000)  # no uint16 wrap-around
    # a plain structured .npy (no pickle) is accepted too
    np.save(tmp_path / "plain.npy", ev)
    np.testing.assert_array_equal(load_eventgpt_npy(tmp_path / "plain.npy")["t"], ev["t"])
    # numpy scalars inside the dict are fine (numpy's own scalar reconstructor)
    np.save(tmp_path / "scalars.npy", {**d, "t0": np.int64(5)}, allow_pickle=True)
    assert int(load_eventgpt_npy(tmp_path / "scalars.npy")["t0"]) == 5


class _Exploit:
    """Pickles to a call of os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def test_malicious_npy_is_refused_and_its_payload_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = f"touch {marker}"
    bad = tmp_path / "evil.npy"
    d = {"x": np.zeros(2, np.uint16), "y": np.zeros(2, np.uint16), "t": np.arange(2), "p": np.ones(2, np.uint8),
         "boom": _Exploit(payload)}
    np.save(bad, d, allow_pickle=True)
    # sanity: the file really is an exploit (proved in a throwaway copy with a different marker)
    proof = tmp_path / "proof"
    np.save(tmp_path / "proof.npy", {"boom": _Exploit(f"touch {proof}")}, allow_pickle=True)
    np.load(tmp_path / "proof.npy", allow_pickle=True)
    assert proof.exists()
    # the restricted loader refuses it, names the file and the global, and nothing ran
    with pytest.raises(DataError, match=r"evil\.npy: refused to unpickle global '(posix|os|nt)\.system'") as ei:
        load_eventgpt_npy(bad)
    assert str(bad) in str(ei.value)
    assert not marker.exists()
    # a raw pickle stream behind an object-array header (builtins.eval) is refused as well
    raw = tmp_path / "eval.npy"
    with open(raw, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(pickle.dumps(_EvalExploit(f"open({str(marker)!r}, 'w')")))
    with pytest.raises(DataError, match=r"refused to unpickle global 'builtins\.eval'"):
        load_eventgpt_npy(raw)
    assert not marker.exists()


class _EvalExploit:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple:
        return (eval, (self.code,))


def test_corrupt_eventgpt_files_give_data_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.npy"
    np.save(path, {"x": np.arange(100), "y": np.arange(100), "t": np.arange(100), "p": np.zeros(100)},
            allow_pickle=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    with pytest.raises(DataError, match=r"cut\.npy: corrupt or truncated pickle"):
        load_eventgpt_npy(path)
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(DataError, match=r"text\.npy: not an \.npy file"):
        load_eventgpt_npy(tmp_path / "text.npy")
    np.save(tmp_path / "nokeys.npy", {"x": np.arange(3)}, allow_pickle=True)
    with pytest.raises(DataError, match=r"nokeys\.npy: dict lacks keys \['y', 't', 'p'\]"):
        load_eventgpt_npy(tmp_path / "nokeys.npy")
