"""The ``two_devices`` placement on CPUs: the drafter in its own process, on its own core.

Tiny models spend most of a forward in Python, so two threads of one process take turns on the GIL and do not
overlap; two processes do. :class:`ProcessDrafter` is a :class:`~sdlib.decoding.drafters.Drafter` whose drafter
lives in a child process (``spawn``: nothing of the parent's thread pools is inherited), pinned to ``cores`` with
its own thread count. The parent sends the request's inputs when the request starts and the child drafts at once,
while the target prefills in the parent (up to ``window`` drafts: the drafter's guess of the answer's start);
with ``ahead > 0`` it also keeps drafting while the target verifies (*pipelined drafting*): after proposing a block
it drafts on as if the whole block will be accepted, up to ``ahead`` tokens past it; ``feedback`` keeps what still
fits the target's text and discards the rest (the chain rule of :class:`~sdlib.decoding.drafters.ChainDrafter`).

The drafter is built in the child by ``factory``, a picklable callable (a module-level function or a
``functools.partial`` of one) that returns a :class:`~sdlib.decoding.drafters.ChainDrafter`; it loads its model from
disk there. Under sampling the child draws its drafts from its own generator, seeded from the caller's.

Timestamps are ``time.perf_counter`` (CLOCK_MONOTONIC on Linux: one clock for both processes), so the drafts ready
when the target's prefill ends are counted, not computed. On a GPU the same class runs the drafter on another
device; a shared GPU would use CUDA streams instead (not built here).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from typing import Any, Callable

import torch

from sdlib.align.heads import load_module
from sdlib.decoding.drafters import FeatureDrafter, Proposal, TokenDrafter
from sdlib.decoding.processors import GREEDY, Sampling
from sdlib.models import scale
from sdlib.threads import usable_cpus


def split_cores() -> tuple[set[int] | None, set[int] | None]:
    """(target cores, drafter cores): the usable cores split in two halves, the target's first; (None, None) when
    only one core is usable (then the two processes share it and nothing overlaps: say so in any timing)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cores = sorted(os.sched_getaffinity(0))[: usable_cpus()]
    if len(cores) < 2:
        return None, None
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


def _serve(conn, factory: Callable[[], Any], cores: set[int] | None, threads: int) -> None:
    try:
        if cores:
            os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads)
        drafter = factory()
        conn.send(("ready", drafter.target_vocab))
    except Exception:  # noqa: BLE001 - the parent raises it with the child's traceback
        conn.send(("error", traceback.format_exc()))
        return
    active, idle, limit, ahead, window = False, True, 0, 0, 0
    deferred: str | None = None  # an error in a message that has no reply, raised at the next call
    while True:
        if active and not idle and drafter.chain_length < limit and not conn.poll():
            if not drafter.draft_one():
                idle = True
            continue
        msg = conn.recv()
        op, args = msg[0], msg[1:]
        if op == "stop":
            break
        try:
            if op == "begin":
                inputs, sampling, seed, window, ahead = args
                gen = torch.Generator().manual_seed(seed) if seed is not None else None
                drafter.begin(inputs, sampling, gen)
                active, idle, limit = True, False, window
                continue
            if op == "feedback":
                drafter.feedback(*args)
                idle, limit = False, ahead
                continue
            if op == "prefill_done":
                drafter.prefill_done(*args)
                continue
            if deferred is not None:
                conn.send(("error", deferred))
                deferred = None
                continue
            if op == "propose":
                p = drafter.propose(*args)
                if ahead:
                    idle, limit = False, len(p) + 1 + ahead
                conn.send(("ok", (p.tokens, p.probs, p.ready_at)))
            elif op == "advance":
                conn.send(("ok", drafter.advance(*args)))
            elif op == "events":
                conn.send(("ok", drafter.events()))
            else:
                conn.send(("error", f"unknown request {op!r}"))
        except Exception:  # noqa: BLE001
            tb = traceback.format_exc()
            if op in ("begin", "feedback", "prefill_done"):
                deferred, active = tb, False
            else:
                conn.send(("error", tb))


class ProcessDrafter:
    """A drafter in a child process (module docstring). Use as a context manager, or call :meth:`close`."""

    concurrent = True
    wants_target_hidden = False  # cross-modal drafters read their own sensor; no target state crosses processes

    def __init__(self, factory: Callable[[], Any], cores: set[int] | None = None, threads: int = 1,
                 window: int = 8, ahead: int = 0, start_timeout_s: float = 300.0) -> None:
        self.window, self.ahead = int(window), int(ahead)
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, factory, cores, threads), daemon=True,
                                 name="sdlib-drafter")
        self._proc.start()
        child.close()
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise RuntimeError(f"drafter process did not start within {start_timeout_s:.0f} s")
        status, value = self._conn.recv()
        if status != "ready":
            self.close()
            raise RuntimeError(f"drafter process failed to build its drafter:\n{value}")
        self.target_vocab = int(value)
        self.cores = cores

    def _call(self, op: str, *args: Any) -> Any:
        self._conn.send((op, *args))
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"drafter process, {op}:\n{value}")
        return value

    def begin(self, inputs: Any, sampling: Sampling = GREEDY, generator: torch.Generator | None = None) -> None:
        seed = None
        if not sampling.greedy:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        self._conn.send(("begin", inputs, sampling, seed, self.window, self.ahead))

    def advance(self, n: int) -> int:
        return int(self._call("advance", n))

    def propose(self, k: int, ready_by: float | None = None) -> Proposal:
        tokens, probs, ready_at = self._call("propose", k, ready_by)
        return Proposal(tokens, probs, list(ready_at))

    def feedback(self, accepted: list[int], token: int, hidden: torch.Tensor | None = None) -> None:
        self._conn.send(("feedback", [int(t) for t in accepted], int(token)))

    def prefill_done(self, at: float) -> None:
        self._conn.send(("prefill_done", at))

    def events(self) -> list[tuple[float, str, int]]:
        return list(self._call("events"))

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
        self._conn.close()

    def __enter__(self) -> "ProcessDrafter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PairDrafter:
    """A picklable ``factory`` for :class:`ProcessDrafter`: loads a scale pair saved in ``pair_dir`` (the layout of
    :func:`sdlib.models.scale.load_pair`) and builds its cross-modal drafter there.

    ``kind``: ``"token"`` (:class:`~sdlib.decoding.drafters.TokenDrafter`) or ``"feature"``
    (:class:`~sdlib.decoding.drafters.FeatureDrafter` with the adapter saved at ``adapter`` by
    :func:`sdlib.align.heads.save_module`). ``model``: whose model drafts, ``"drafter"`` (EventGPT, the point) or
    ``"target"`` (a self-drafter: tests and upper bounds). ``options`` go to the drafter (``sample_drafts``,
    ``min_confidence``, ...)."""

    def __init__(self, pair_dir: str, kind: str = "token", adapter: str | None = None, model: str = "drafter",
                 **options: Any) -> None:
        if model not in ("drafter", "target"):
            raise ValueError(f"model={model!r}: expected 'drafter' or 'target'")
        self.model = model
        if kind not in ("token", "feature"):
            raise ValueError(f"kind={kind!r}: expected 'token' or 'feature'")
        if kind == "feature" and adapter is None:
            raise ValueError("a feature drafter needs its adapter file (adapter=...)")
        self.pair_dir, self.kind, self.adapter, self.options = str(pair_dir), kind, adapter, options

    def __call__(self):
        drafter, target = scale.load_pair(self.pair_dir)
        drafting = drafter if self.model == "drafter" else target
        if self.kind == "token":
            return TokenDrafter(drafting, target.lm_head.out_features, **self.options)
        return FeatureDrafter(drafting, load_module(self.adapter), target.lm_head, target_embed=target.embed_tokens,
                              **self.options)
