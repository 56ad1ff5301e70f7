"""Online acceptance statistics of speculative decoding, per request and aggregated, in vLLM's conventions.

A *verify round* is one target forward that checked at least one draft; rounds that offered no draft (a plain
decode step, e.g. when the token budget leaves no room for drafts) are counted apart and enter no ratio. With
``D`` verify rounds, ``A`` accepted drafts and ``N`` drafted tokens:

- mean acceptance length ``tau = 1 + A / D`` (vLLM / EAGLE: tokens emitted per verify round, the target's own
  token included); ``tau_no_bonus = A / D`` (ViSpec's convention);
- draft acceptance rate ``A / N``;
- cumulative per-position acceptance ``r_i = n_i / D`` with ``n_i`` the rounds that accepted at least ``i`` drafts
  (vLLM's definition), so ``tau = 1 + sum_i r_i``;
- conditional per-position acceptance ``a_i`` = rounds accepting ``>= i`` over rounds that reached position ``i``
  (accepted ``>= i - 1`` and offered ``>= i``); with a fixed draft length this is ``n_i / n_{i-1}`` (NeMo-Skills'
  conditional rate), the per-position ``alpha`` of the speedup model in :mod:`sdlib.theory`; with dynamic draft
  lengths it does not count rounds that never offered position ``i``;
- the histogram of accepted counts per round.

Every table that shows these numbers states :data:`CONVENTION`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

CONVENTION = ("tau = 1 + accepted/verify rounds (vLLM, bonus token included); tau_no_bonus = accepted/rounds; "
              "acceptance rate = accepted/drafted; r_i = rounds accepting >= i / rounds; a_i = rounds accepting >= i "
              "/ rounds reaching position i")


@dataclass
class AcceptanceStats:
    """Accepted and offered drafts of every round of one request (or, merged, of many)."""

    accepted: list[int] = field(default_factory=list)  # per round with drafts: drafts accepted
    offered: list[int] = field(default_factory=list)  # per round with drafts: drafts offered (k of that round)
    plain_steps: int = 0  # target forwards that verified no draft

    def add(self, accepted: int, offered: int) -> None:
        """Record one round: ``offered`` drafts, of which the first ``accepted`` were accepted."""
        if not 0 <= accepted <= offered:
            raise ValueError(f"a round accepted {accepted} of {offered} drafts: expected 0 <= accepted <= offered")
        if offered == 0:
            self.plain_steps += 1
            return
        self.accepted.append(int(accepted))
        self.offered.append(int(offered))

    @classmethod
    def merged(cls, parts: Iterable["AcceptanceStats"]) -> "AcceptanceStats":
        """All rounds of ``parts`` together (aggregation over requests weights every round equally)."""
        out = cls()
        for p in parts:
            out.accepted += p.accepted
            out.offered += p.offered
            out.plain_steps += p.plain_steps
        return out

    # -- the numbers -------------------------------------------------------------------------------------------------
    @property
    def rounds(self) -> int:
        return len(self.accepted)

    @property
    def drafted(self) -> int:
        return int(sum(self.offered))

    @property
    def accepted_total(self) -> int:
        return int(sum(self.accepted))

    @property
    def tau(self) -> float:
        return 1.0 + self.accepted_total / self.rounds if self.rounds else float("nan")

    @property
    def tau_no_bonus(self) -> float:
        return self.accepted_total / self.rounds if self.rounds else float("nan")

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_total / self.drafted if self.drafted else float("nan")

    def _counts(self) -> tuple[np.ndarray, np.ndarray, int]:
        acc, off = np.asarray(self.accepted, dtype=int), np.asarray(self.offered, dtype=int)
        return acc, off, int(off.max()) if len(off) else 0

    def cumulative(self) -> list[float]:
        """``r_i`` for i = 1 .. the longest draft offered."""
        acc, _, kmax = self._counts()
        return [float((acc >= i).mean()) for i in range(1, kmax + 1)] if self.rounds else []

    def conditional(self) -> list[float]:
        """``a_i`` for i = 1 .. the longest draft offered (NaN where no round reached position i)."""
        acc, off, kmax = self._counts()
        out = []
        for i in range(1, kmax + 1):
            reached = (acc >= i - 1) & (off >= i)
            out.append(float((acc[reached] >= i).mean()) if reached.any() else float("nan"))
        return out

    def histogram(self) -> list[int]:
        """Rounds by accepted count, 0 .. the longest draft offered."""
        acc, _, kmax = self._counts()
        return np.bincount(acc, minlength=kmax + 1).tolist() if self.rounds else []

    def to_dict(self) -> dict:
        return {"rounds": self.rounds, "plain_steps": self.plain_steps, "drafted": self.drafted,
                "accepted": self.accepted_total, "tau": self.tau, "tau_no_bonus": self.tau_no_bonus,
                "acceptance_rate": self.acceptance_rate, "cumulative": self.cumulative(),
                "conditional": self.conditional(), "histogram": self.histogram(), "convention": CONVENTION}
