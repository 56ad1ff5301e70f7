"""Thread pools are sized to the CPUs a process may use, not to the host's count."""
import os

from sdlib import threads


def test_quota_caps_affinity(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 1.5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert threads.usable_cpus() == 1


def test_no_quota_uses_affinity(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert threads.usable_cpus() == 3


def test_a_tiny_quota_still_allows_one_thread(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 0.2)
    assert threads.usable_cpus() == 1


def test_explicit_settings_win(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert threads.size_thread_pools() == 2
    assert os.environ["OMP_NUM_THREADS"] == "7" and os.environ["MKL_NUM_THREADS"] == "2"


def test_importing_sdlib_sized_the_pools():
    import sdlib  # noqa: F401

    assert all(os.environ.get(v) for v in threads.POOL_VARIABLES)
