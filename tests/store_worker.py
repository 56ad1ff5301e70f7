"""A feature-store writer process for the kill/resume test: ``python tests/store_worker.py ROOT N SHARD_SIZE``.

Writes samples ``0..N-1`` (content derived from the index alone, :func:`sample`) into a store at ROOT, skipping the
ones already stored, sleeping ~20 ms per sample so that a test can kill it mid-run. It prints one line per event,
flushed at once: ``open done=<k>`` after opening, ``adding <id>`` before each add, ``shard <file>`` after each flushed
shard, ``finished`` at the end. It does not merge: the test does, as a stage would after all ranks finish.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from sdlib.align.store import ShardWriter

CONFIG = {"drafter": "tiny", "target": "tiny", "layers": [1, 2]}
FINGERPRINT = "store-worker-v1"
SECONDS_PER_SAMPLE = 0.02


def sample_id(i: int) -> str:
    return f"req-{i:04d}"


def sample(i: int) -> dict[str, torch.Tensor]:
    """Sample ``i``'s tensors: ``n = 2 + i % 7`` positions, content from a generator seeded with ``i``."""
    g = torch.Generator().manual_seed(1000 + i)
    n = 2 + i % 7
    return {"tokens": torch.randint(0, 5000, (n,), generator=g),  # [n] int64
            "drafter": torch.randn(n, 8, generator=g).half(),  # [n, 8] float16
            "target": torch.randn(n, 12, generator=g)}  # [n, 12] float32


def main(root: Path, n: int, shard_size: int) -> None:
    with ShardWriter(root, config=CONFIG, fingerprint=FINGERPRINT, shard_size=shard_size) as writer:
        done = writer.done_ids
        print(f"open done={len(done)}", flush=True)
        for i in range(n):
            if sample_id(i) in done:
                continue
            time.sleep(SECONDS_PER_SAMPLE)  # the extraction's forward passes
            print(f"adding {sample_id(i)}", flush=True)  # before: every stored sample was announced
            written = writer.add(sample_id(i), sample(i))
            if written is not None:
                print(f"shard {written.name}", flush=True)
    print("finished", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python tests/store_worker.py ROOT N SHARD_SIZE")
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
