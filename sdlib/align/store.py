"""The feature store: paired hidden states of many samples on disk, as sharded safetensors with a JSON manifest.

The extraction stage writes, per sample (one (clip, question) request), a few tensors that share their length along
dim 0 (``n`` positions, different for each sample): e.g. ``tokens`` [n] int64, ``drafter`` [n, Hd], ``target``
[n, Ht], ``target_layers`` [n, L, Ht]. The adapter stage streams them back, a shard at a time.

Layout of a store root::

    shard-r00-00000.safetensors   per key: the shard's samples concatenated along dim 0; ``__offsets__`` int64
    shard-r00-00001.safetensors   [n_samples + 1] (sample j is rows offsets[j]:offsets[j+1]); metadata: sample ids
    index.r00.json                the rank manifest: what rank 0 has written (rewritten after each shard)
    index.r00.lock                held (flock) while a writer of rank 0 is open: one process per rank
    index.json                    the merged manifest the reader opens (:func:`merge_manifests`)

Manifest (rank manifests have the same fields plus ``rank``)::

    {"format": 1, "config": {...}, "fingerprint": str, "keys": {key: {"dtype": "float16", "trailing_shape": [Hd]}},
     "shards": [{"file", "sample_ids", "rows", "sha256", "bytes"}], "n_samples": int, "n_rows": int}

Why it is built this way:

- **Resume, never duplicate.** Extraction is long and gets killed. Every file is written to a temporary name in the
  same folder, fsynced and renamed into place; a shard is on record only once the rank manifest that lists it has
  been renamed into place. A writer reopened after ``kill -9`` deletes temporary files and shards its manifest does
  not list (a crash between the two renames), so at most the unflushed buffer is lost, and :attr:`ShardWriter.done_ids`
  tells the caller which samples to skip.
- **Many processes, no locks between them.** Each rank writes its own shards and its own manifest; after all ranks
  finish, the caller calls :func:`merge_manifests` once (single-process runs too), which checks that the ranks agree
  and that no sample was stored twice. Writing new shards removes a previous ``index.json``, so a store is readable
  only as of a merge that saw every shard.
- **Caches keyed by the code that made them** (DESIGN.md, principle 8). The writer records ``config`` and
  ``fingerprint``; reopening a store made with others raises :class:`StaleStoreError` unless ``overwrite=True``.
- **Corruption is loud.** Each shard's sha256 is in the manifest and is checked on every load (hashing is cheap
  next to training): a damaged shard raises :class:`CorruptShardError` naming the file, never yields wrong rows.
- **Bounded memory.** :meth:`FeatureStore.stream` holds at most two shards: the one being consumed and the one a
  background thread prefetches. A shard is read into one anonymous memory map and its tensors are views of it, so
  it is one allocation that goes back to the OS as soon as the last view is dropped.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import os
import queue
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

FORMAT = 1
OFFSETS_KEY = "__offsets__"  # reserved: user keys may not start with "__"
INDEX = "index.json"

#: safetensors dtype tags <-> torch dtypes (the dtypes a store can hold).
DTYPE_TAGS: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dt: str(dt).removeprefix("torch.") for dt in DTYPE_TAGS.values()}


class StoreError(RuntimeError):
    """A feature store on disk is not what the caller needs."""


class StaleStoreError(StoreError):
    """The store was made with another config or by other code (fingerprint): rebuild it (``overwrite=True``)."""


class CorruptShardError(StoreError):
    """A shard file does not match its manifest entry (checksum, size, content) or is missing."""


def rank_manifest_name(rank: int) -> str:
    return f"index.r{rank:02d}.json"


def shard_name(rank: int, index: int) -> str:
    return f"shard-r{rank:02d}-{index:05d}.safetensors"


# -- files: atomic writes, reading a shard back ------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | bytearray | memoryview) -> None:
    """``path`` holds ``data`` or its previous content, never a mix: temp file in the same folder, fsync, rename,
    fsync of the folder (so the rename itself survives a power cut). The temp file is ``<name>.tmp``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not valid JSON ({exc}); manifests are written atomically, so this file was "
                         f"damaged after it was written") from exc


def read_verified(path: Path, entry: Mapping[str, Any]) -> mmap.mmap:
    """The bytes of shard file ``path`` in an anonymous memory map, after checking its size and sha256 against its
    manifest ``entry`` (the bytes that are checked are the bytes that are used)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptShardError(f"shard {path}: listed in the manifest but missing on disk") from None
    if size != entry["bytes"]:
        raise CorruptShardError(f"shard {path}: {size} bytes on disk, the manifest says {entry['bytes']}")
    buf = mmap.mmap(-1, max(size, 1))
    with open(path, "rb", buffering=0) as f:
        view = memoryview(buf)[:size]
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                raise CorruptShardError(f"shard {path}: ended after {got} of {size} bytes while reading")
            got += n
        digest = hashlib.sha256(view).hexdigest()
        view.release()
    if digest != entry["sha256"]:
        raise CorruptShardError(f"shard {path}: sha256 {digest[:16]}... does not match the manifest's "
                                f"{entry['sha256'][:16]}...: the file is corrupt; rebuild the store (overwrite=True)")
    return buf


def parse_safetensors(buf: mmap.mmap, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (views of ``buf``, no copy) and metadata of a safetensors file held in ``buf``."""
    try:
        header_len = int.from_bytes(buf[:8], "little")
        header = json.loads(bytes(buf[8:8 + header_len]))
        start = 8 + header_len
        metadata = header.pop("__metadata__", None) or {}
        tensors = {}
        for name, info in header.items():
            dtype = DTYPE_TAGS[info["dtype"]]
            begin, end = info["data_offsets"]
            itemsize = torch.empty((), dtype=dtype).element_size()
            count = (end - begin) // itemsize
            flat = (torch.frombuffer(buf, dtype=dtype, count=count, offset=start + begin) if count
                    else torch.empty(0, dtype=dtype))
            tensors[name] = flat.view(info["shape"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CorruptShardError(f"shard {path}: not a readable safetensors file ({exc!r})") from exc
    return tensors, metadata


# -- writing -----------------------------------------------------------------------------------------------------------
def _normal_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as it reads back from JSON (tuples -> lists), so a fresh and a reloaded config compare equal."""
    try:
        return json.loads(json.dumps(dict(config), sort_keys=True))
    except TypeError as exc:
        raise ValueError(f"store config must be JSON-serialisable: {exc}") from exc


class ShardWriter:
    """Writes samples of one rank into a store root, ``shard_size`` samples per shard; resumes after a crash.

    Usage (each rank in its own process; then once, after every rank has finished, ``merge_manifests(root)``)::

        with ShardWriter(root, config=cfg, fingerprint=fp, shard_size=64, rank=r) as writer:
            for sample_id, request in my_requests:
                if sample_id in writer.done_ids:
                    continue
                writer.add(sample_id, extract(request))   # {key: [n, ...] tensor}
        merge_manifests(root)

    ``add`` checks each sample against the first one this rank stored (same keys, dtypes, trailing shapes) and that
    its tensors share ``n``; it copies the tensors to CPU, so the caller may reuse its buffers. A shard is written
    when ``shard_size`` samples are buffered; ``close`` writes the rest as a last, smaller shard.

    Opening: temporary files and shards not in this rank's manifest (left by a crash) are deleted; an existing
    manifest with another ``config`` or ``fingerprint`` raises :class:`StaleStoreError`, unless ``overwrite=True``,
    which removes this rank's old shards (other ranks' files are theirs to clean up).
    """

    def __init__(self, root: str | Path, *, config: Mapping[str, Any], fingerprint: str, shard_size: int,
                 rank: int = 0, overwrite: bool = False) -> None:
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be a non-negative int, got {rank!r}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"fingerprint must be a non-empty str (the code fingerprint), got {fingerprint!r}")
        self.root = Path(root)
        self.rank = rank
        self.shard_size = shard_size
        self.config = _normal_config(config)
        self.fingerprint = fingerprint
        self.manifest_path = self.root / rank_manifest_name(rank)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire_lock()
        self._closed = False
        self._buffer: list[tuple[str, dict[str, torch.Tensor]]] = []
        self._buffered_ids: set[str] = set()
        self._index_removed = False
        try:
            self._open(overwrite)
        except BaseException:
            self._release_lock()
            raise

    # -- opening ---------------------------------------------------------------------------------------------------
    def _acquire_lock(self):
        path = self.root / f"index.r{self.rank:02d}.lock"
        f = open(path, "a+b")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise StoreError(f"{path}: another writer of rank {self.rank} has this store open (one process per "
                             f"rank)") from None
        return f

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None

    def _own_files(self) -> dict[int, Path]:
        """``{shard index: path}`` of this rank's shard files on disk."""
        pattern = re.compile(rf"shard-r{self.rank:02d}-(\d+)\.safetensors")
        out = {}
        for p in self.root.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                out[int(m.group(1))] = p
        return out

    def _open(self, overwrite: bool) -> None:
        tmp_pattern = re.compile(rf"(shard-r{self.rank:02d}-\d+\.safetensors|index\.r{self.rank:02d}\.json)\.tmp")
        for p in self.root.iterdir():
            if tmp_pattern.fullmatch(p.name):
                p.unlink()
        manifest = read_json(self.manifest_path) if self.manifest_path.exists() else None
        if manifest is not None:
            stale = []
            if manifest.get("format") != FORMAT:
                stale.append(f"format {manifest.get('format')!r} (this code writes {FORMAT})")
            if manifest.get("fingerprint") != self.fingerprint:
                stale.append(f"fingerprint {manifest.get('fingerprint')!r} (this code: {self.fingerprint!r})")
            if manifest.get("config") != self.config:
                stale.append(f"config {manifest.get('config')!r} (this run: {self.config!r})")
            if stale and not overwrite:
                raise StaleStoreError(f"{self.manifest_path}: made with another " + "; ".join(stale)
                                      + ". Rebuild it with overwrite=True (or use another root)")
            if stale:
                manifest = None
                (self.root / INDEX).unlink(missing_ok=True)  # it lists shards that are about to go
        if manifest is None:
            manifest = {"format": FORMAT, "rank": self.rank, "config": self.config, "fingerprint": self.fingerprint,
                        "keys": {}, "shards": [], "n_samples": 0, "n_rows": 0}
            if self.manifest_path.exists():  # overwrite: the new, empty manifest first, then the old shards go
                write_json_atomic(self.manifest_path, manifest)
        self._manifest = manifest
        listed = {entry["file"] for entry in manifest["shards"]}
        for p in self._own_files().values():
            if p.name not in listed:  # a crash between the shard's rename and the manifest's: its samples are redone
                p.unlink()
        for entry in manifest["shards"]:
            path = self.root / entry["file"]
            if not path.exists():
                raise CorruptShardError(f"shard {path}: listed in {self.manifest_path} but missing on disk; "
                                        f"rebuild the store (overwrite=True)")
            if path.stat().st_size != entry["bytes"]:
                raise CorruptShardError(f"shard {path}: {path.stat().st_size} bytes on disk, {self.manifest_path} "
                                        f"says {entry['bytes']}; rebuild the store (overwrite=True)")
        self._done = frozenset(sid for entry in manifest["shards"] for sid in entry["sample_ids"])
        self._next_index = 1 + max((int(re.findall(r"\d+", e["file"])[-1]) for e in manifest["shards"]), default=-1)

    # -- adding ----------------------------------------------------------------------------------------------------
    @property
    def done_ids(self) -> frozenset[str]:
        """Sample ids this rank has stored in shards on record (the caller skips them when it resumes). Cheap to
        call per sample: the same frozen set until the next shard is written."""
        return self._done

    @property
    def pending_ids(self) -> list[str]:
        """Sample ids added but not yet written (lost if the process dies now)."""
        return [sid for sid, _ in self._buffer]

    @property
    def keys(self) -> dict[str, dict[str, Any]]:
        """``{key: {"dtype", "trailing_shape"}}`` every sample of this store has (empty before the first sample)."""
        return {k: dict(v) for k, v in self._manifest["keys"].items()}

    def _check(self, sample_id: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
        """The sample's key spec, after checking it on its own and against the store's; ValueError otherwise."""
        if not isinstance(sample_id, str) or not sample_id:
            raise ValueError(f"sample id must be a non-empty str, got {sample_id!r}")
        if sample_id in self._done or sample_id in self._buffered_ids:
            where = "is already stored in " + str(self.root) if sample_id in self._done else "was already added"
            raise ValueError(f"sample {sample_id!r} {where}: each sample is stored once (skip writer.done_ids)")
        if not tensors:
            raise ValueError(f"sample {sample_id!r}: no tensors")
        spec, lengths = {}, {}
        for key, t in tensors.items():
            if not isinstance(key, str) or not key or key.startswith("__"):
                raise ValueError(f"sample {sample_id!r}: key {key!r} is not allowed (a non-empty str not starting "
                                 f"with '__', which the store reserves for {OFFSETS_KEY!r})")
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"sample {sample_id!r}, key {key!r}: expected a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in DTYPE_NAMES:
                raise ValueError(f"sample {sample_id!r}, key {key!r}: dtype {t.dtype} cannot be stored; expected one "
                                 f"of {sorted(DTYPE_NAMES.values())}")
            if t.dim() < 1 or t.shape[0] < 1:
                raise ValueError(f"sample {sample_id!r}, key {key!r}: shape {list(t.shape)}; expected [n, ...] with "
                                 f"n >= 1 positions along dim 0")
            spec[key] = {"dtype": DTYPE_NAMES[t.dtype], "trailing_shape": list(t.shape[1:])}
            lengths[key] = t.shape[0]
        if len(set(lengths.values())) > 1:
            raise ValueError(f"sample {sample_id!r}: tensors disagree on n (dim 0): {lengths}; all keys of a sample "
                             f"cover the same positions")
        expected = self._manifest["keys"] or (self._spec_of(self._buffer[0][1]) if self._buffer else {})
        if not expected:  # the first sample of the store sets what every later one must have
            return spec
        if set(spec) != set(expected):
            missing, extra = sorted(set(expected) - set(spec)), sorted(set(spec) - set(expected))
            raise ValueError(f"sample {sample_id!r}: keys {sorted(spec)}, the store's samples have {sorted(expected)} "
                             f"(missing {missing}, unexpected {extra})")
        for key, want in expected.items():
            got = spec[key]
            if got["dtype"] != want["dtype"]:
                raise ValueError(f"sample {sample_id!r}, key {key!r}: dtype {got['dtype']}, the store's samples have "
                                 f"{want['dtype']}")
            if got["trailing_shape"] != want["trailing_shape"]:
                raise ValueError(f"sample {sample_id!r}, key {key!r}: shape [n, *{got['trailing_shape']}], the "
                                 f"store's samples have [n, *{want['trailing_shape']}]")
        return spec

    @staticmethod
    def _spec_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
        return {k: {"dtype": DTYPE_NAMES[t.dtype], "trailing_shape": list(t.shape[1:])} for k, t in tensors.items()}

    def add(self, sample_id: str, tensors: Mapping[str, torch.Tensor]) -> Path | None:
        """Buffer one sample (``{key: [n, ...]}``); returns the shard file written when it completed a shard."""
        if self._closed:
            raise StoreError(f"{self.manifest_path}: writer is closed")
        self._check(sample_id, tensors)
        copied = {k: t.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
                  for k, t in tensors.items()}
        self._buffer.append((sample_id, copied))
        self._buffered_ids.add(sample_id)
        return self.flush() if len(self._buffer) >= self.shard_size else None

    def flush(self) -> Path | None:
        """Write the buffered samples as one shard and put it on record; returns its path (None if nothing was
        buffered)."""
        if not self._buffer:
            return None
        if not self._index_removed:  # the merged manifest no longer describes every shard
            (self.root / INDEX).unlink(missing_ok=True)
            self._index_removed = True
        ids = [sid for sid, _ in self._buffer]
        keys = sorted(self._buffer[0][1])
        lengths = torch.tensor([t[keys[0]].shape[0] for _, t in self._buffer], dtype=torch.int64)
        offsets = torch.zeros(len(ids) + 1, dtype=torch.int64)  # [n_samples + 1]
        offsets[1:] = torch.cumsum(lengths, 0)
        data = {key: torch.cat([t[key] for _, t in self._buffer]) for key in keys}  # [rows, ...] each
        data[OFFSETS_KEY] = offsets
        name = shard_name(self.rank, self._next_index)
        blob = safetensors_bytes(data, metadata={"format": str(FORMAT), "sample_ids": json.dumps(ids),
                                                  "fingerprint": self.fingerprint, "rank": str(self.rank)})
        del data
        write_atomic(self.root / name, blob)
        entry = {"file": name, "sample_ids": ids, "rows": int(offsets[-1]),
                 "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
        del blob
        m = self._manifest
        updated = {**m, "keys": m["keys"] or self._spec_of(self._buffer[0][1]), "shards": [*m["shards"], entry],
                   "n_samples": m["n_samples"] + len(ids), "n_rows": m["n_rows"] + entry["rows"]}
        write_json_atomic(self.manifest_path, updated)  # from here on the shard is on record
        self._manifest = updated
        self._next_index += 1
        self._done = self._done | frozenset(ids)
        self._buffer.clear()
        self._buffered_ids.clear()
        return self.root / name

    def close(self) -> None:
        """Write the remaining buffer as a last shard and the rank manifest (also when this rank stored nothing,
        so :func:`merge_manifests` sees it took part), and release the rank's lock. Idempotent."""
        if self._closed:
            return
        self.flush()  # if this raises, the writer stays open (and locked): close() may be retried
        if not self.manifest_path.exists():
            write_json_atomic(self.manifest_path, self._manifest)
        self._closed = True
        self._release_lock()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
            return
        try:  # the buffered samples were checked when added: keep them, but never hide the original error
            self.close()
        except Exception as close_exc:  # noqa: BLE001
            exc.add_note(f"(also, closing the feature-store writer failed: {close_exc!r})")


# -- merging -----------------------------------------------------------------------------------------------------------
def merge_manifests(root: str | Path, *, world_size: int | None = None) -> dict[str, Any]:
    """Combine every rank manifest under ``root`` into ``index.json`` (atomically) and return it.

    Call it once after all ranks have finished (single-process runs too). Checks: the ranks agree on format,
    config, fingerprint and keys (ranks that stored nothing have no keys); no sample id is stored twice; every
    listed shard file exists with its recorded size; with ``world_size``, that ranks ``0..world_size-1`` all wrote
    a manifest. Shards are listed by rank, then in the order each rank wrote them.
    """
    root = Path(root)
    pattern = re.compile(r"index\.r(\d+)\.json")
    found = sorted((int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else [])
                   if (m := pattern.fullmatch(p.name)))
    if not found:
        raise StoreError(f"{root}: no rank manifests (index.rNN.json); run extraction first")
    if world_size is not None:
        missing = sorted(set(range(world_size)) - {r for r, _ in found})
        if missing:
            raise StoreError(f"{root}: no manifest from ranks {missing} of world size {world_size}; "
                             f"those ranks have not finished")
    first_rank, first_path = found[0]
    first = read_json(first_path)
    keys: dict[str, Any] = {}
    keys_from = None
    owner: dict[str, str] = {}
    shards = []
    for rank, path in found:
        m = read_json(path)
        for field in ("format", "config", "fingerprint"):
            if m.get(field) != first.get(field):
                raise StaleStoreError(f"{root}: {path.name} has {field} {m.get(field)!r}, {first_path.name} has "
                                      f"{first.get(field)!r}; all ranks must be written by the same code and config")
        if m.get("keys"):
            if keys_from is None:
                keys, keys_from = m["keys"], path.name
            elif m["keys"] != keys:
                raise StoreError(f"{root}: {path.name} stores keys {m['keys']}, {keys_from} stores {keys}")
        for entry in m["shards"]:
            shard = root / entry["file"]
            if not shard.exists():
                raise CorruptShardError(f"shard {shard}: listed in {path.name} but missing on disk")
            if shard.stat().st_size != entry["bytes"]:
                raise CorruptShardError(f"shard {shard}: {shard.stat().st_size} bytes on disk, {path.name} says "
                                        f"{entry['bytes']}")
            for sid in entry["sample_ids"]:
                if sid in owner:
                    raise StoreError(f"{root}: sample {sid!r} is stored twice, in {owner[sid]} and {entry['file']}; "
                                     f"ranks must write disjoint samples")
                owner[sid] = entry["file"]
            shards.append(entry)
    merged = {"format": first["format"], "config": first["config"], "fingerprint": first["fingerprint"],
              "keys": keys, "shards": shards, "n_samples": len(owner), "n_rows": sum(e["rows"] for e in shards),
              "ranks": [r for r, _ in found]}
    write_json_atomic(root / INDEX, merged)
    return merged


# -- reading -----------------------------------------------------------------------------------------------------------
Sample = dict[str, torch.Tensor]
_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class FeatureStore:
    """Read side of a merged store (``index.json``): random access, whole-store tensors, and a shuffled stream.

    Every shard read checks the shard's sha256 against the manifest (:class:`CorruptShardError` otherwise). With
    ``fingerprint`` or ``config`` given, a store made with others raises :class:`StaleStoreError`.
    """

    def __init__(self, root: str | Path, *, fingerprint: str | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.index_path = self.root / INDEX
        if not self.index_path.exists():
            raise FileNotFoundError(f"{self.index_path}: no feature store manifest; run extraction first (the "
                                    f"writers, then merge_manifests)")
        m = read_json(self.index_path)
        if m.get("format") != FORMAT:
            raise StaleStoreError(f"{self.index_path}: format {m.get('format')!r}, this code reads {FORMAT}")
        if fingerprint is not None and m["fingerprint"] != fingerprint:
            raise StaleStoreError(f"{self.index_path}: made by code {m['fingerprint']!r}, expected {fingerprint!r}; "
                                  f"rebuild the store")
        if config is not None and m["config"] != _normal_config(config):
            raise StaleStoreError(f"{self.index_path}: config {m['config']!r}, expected {_normal_config(config)!r}")
        self._manifest = m
        self._where: dict[str, tuple[int, int]] = {}  # sample id -> (shard, position in shard)
        for i, entry in enumerate(m["shards"]):
            for j, sid in enumerate(entry["sample_ids"]):
                self._where[sid] = (i, j)

    # -- what is stored --------------------------------------------------------------------------------------------
    @property
    def sample_ids(self) -> list[str]:
        return [sid for entry in self._manifest["shards"] for sid in entry["sample_ids"]]

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._manifest["config"]))

    @property
    def fingerprint(self) -> str:
        return self._manifest["fingerprint"]

    @property
    def n_samples(self) -> int:
        return self._manifest["n_samples"]

    @property
    def n_rows(self) -> int:
        return self._manifest["n_rows"]

    @property
    def n_shards(self) -> int:
        return len(self._manifest["shards"])

    @property
    def keys(self) -> dict[str, dict[str, Any]]:
        """``{key: {"dtype": "float16", "trailing_shape": [...]}}``."""
        return {k: dict(v) for k, v in self._manifest["keys"].items()}

    def shard_path(self, i: int) -> Path:
        return self.root / self._manifest["shards"][i]["file"]

    def __len__(self) -> int:
        return self.n_samples

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._where

    # -- reading shards --------------------------------------------------------------------------------------------
    def verify(self) -> None:
        """Check every shard's size and sha256 against the manifest; :class:`CorruptShardError` names the first
        bad file."""
        for i in range(self.n_shards):
            read_verified(self.shard_path(i), self._manifest["shards"][i]).close()  # one shard in memory at a time

    def _read_shard(self, i: int) -> tuple[list[str], dict[str, torch.Tensor], list[int]]:
        """Shard ``i``: its sample ids, its tensors (``{key: [rows, ...]}``, views of one buffer) and offsets."""
        path, entry = self.shard_path(i), self._manifest["shards"][i]
        tensors, metadata = parse_safetensors(read_verified(path, entry), path)
        offsets = tensors.pop(OFFSETS_KEY, None)
        ids = entry["sample_ids"]
        if set(tensors) != set(self._manifest["keys"]):
            raise CorruptShardError(f"shard {path}: keys {sorted(tensors)}, the manifest has "
                                    f"{sorted(self._manifest['keys'])}")
        if (offsets is None or offsets.shape != (len(ids) + 1,) or int(offsets[-1]) != entry["rows"]
                or json.loads(metadata.get("sample_ids", "null")) != ids):
            raise CorruptShardError(f"shard {path}: offsets or sample ids disagree with the manifest")
        return ids, tensors, offsets.tolist()

    @staticmethod
    def _sample(tensors: Mapping[str, torch.Tensor], offsets: Sequence[int], j: int) -> Sample:
        return {k: t[offsets[j]:offsets[j + 1]] for k, t in tensors.items()}

    def shard(self, i: int) -> list[tuple[str, Sample]]:
        """Every sample of shard ``i`` in stored order, as ``(sample_id, {key: [n, ...]})`` (views of the shard)."""
        if not 0 <= i < self.n_shards:
            raise IndexError(f"{self.index_path}: shard {i} out of range (the store has {self.n_shards})")
        ids, tensors, offsets = self._read_shard(i)
        return [(sid, self._sample(tensors, offsets, j)) for j, sid in enumerate(ids)]

    def _locate(self, sample_id: str) -> tuple[int, int]:
        try:
            return self._where[sample_id]
        except KeyError:
            raise KeyError(f"{self.index_path}: no sample {sample_id!r} in the store "
                           f"({self.n_samples} samples)") from None

    def load(self, sample_id: str) -> Sample:
        """One sample's tensors ``{key: [n, ...]}`` (copies: the shard is freed on return). Each call reads and
        checks the sample's whole shard: for many samples use :meth:`stream` (each shard once)."""
        i, j = self._locate(sample_id)
        _, tensors, offsets = self._read_shard(i)
        return {k: v.clone() for k, v in self._sample(tensors, offsets, j).items()}

    def concat(self, keys: Iterable[str] | None = None,
               sample_ids: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """All rows of the chosen samples (default: every sample, in :attr:`sample_ids` order) in one tensor per key,
        and the int64 offsets ``[n_samples + 1]`` (sample ``j`` is rows ``offsets[j]:offsets[j+1]``).

        For small stores and evaluation: the result is held in memory whole.
        """
        keys = list(self._manifest["keys"]) if keys is None else list(keys)
        unknown = sorted(set(keys) - set(self._manifest["keys"]))
        if unknown:
            raise KeyError(f"{self.index_path}: no keys {unknown} (the store has {sorted(self._manifest['keys'])})")
        ids = self.sample_ids if sample_ids is None else list(sample_ids)
        located = [self._locate(sid) for sid in ids]
        pieces: dict[str, list[torch.Tensor | None]] = {k: [None] * len(ids) for k in keys}
        lengths = [0] * len(ids)
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for n, (i, j) in enumerate(located):
            by_shard.setdefault(i, []).append((n, j))
        for i, wanted in by_shard.items():  # one read per shard; the copies let each shard go before the next
            _, tensors, offsets = self._read_shard(i)
            for n, j in wanted:
                lengths[n] = offsets[j + 1] - offsets[j]
                for k in keys:
                    pieces[k][n] = tensors[k][offsets[j]:offsets[j + 1]].clone()
            del tensors
        out_offsets = torch.zeros(len(ids) + 1, dtype=torch.int64)  # [n_samples + 1]
        out_offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
        out = {}
        for k in keys:
            spec = self._manifest["keys"][k]
            empty = torch.empty((0, *spec["trailing_shape"]), dtype=getattr(torch, spec["dtype"]))
            out[k] = torch.cat(pieces[k]) if ids else empty  # [rows, ...]
            pieces[k] = []
        return out, out_offsets

    # -- streaming -------------------------------------------------------------------------------------------------
    def plan(self, *, shuffle: bool = True, seed: int = 0,
             sample_ids: Iterable[str] | None = None) -> list[tuple[int, list[int]]]:
        """The order :meth:`stream` visits: ``[(shard, [positions in the shard])]``; shards in a seeded random
        order, samples within each shard too (``numpy`` Generator from ``seed``), or stored order without
        ``shuffle``. With ``sample_ids``, only those samples (and only the shards that hold them)."""
        if sample_ids is None:
            chosen = {i: list(range(len(e["sample_ids"]))) for i, e in enumerate(self._manifest["shards"])}
        else:
            wanted = list(sample_ids)
            if len(set(wanted)) != len(wanted):
                raise ValueError(f"{self.index_path}: sample_ids lists a sample more than once")
            chosen = {}
            for i, j in sorted(self._locate(sid) for sid in wanted):
                chosen.setdefault(i, []).append(j)
        shards = sorted(chosen)
        if not shuffle:
            return [(i, chosen[i]) for i in shards]
        rng = np.random.default_rng(seed)
        order = [shards[k] for k in rng.permutation(len(shards))]
        return [(i, [chosen[i][k] for k in rng.permutation(len(chosen[i]))]) for i in order]

    def stream(self, *, shuffle: bool = True, seed: int = 0, prefetch: bool = True,
               sample_ids: Iterable[str] | None = None) -> Iterator[tuple[str, Sample]]:
        """Every chosen sample once, as ``(sample_id, {key: [n, ...]})``, in the order of :meth:`plan`.

        With ``prefetch``, a background thread reads (and checks) the next shard while the caller consumes the
        current one. At most two shards are held: the next one is read only once the caller has moved past the
        previous shard's last sample. Yielded tensors are views of their shard: keeping one keeps that shard's
        buffer alive (clone what you keep). Errors of the thread (e.g. :class:`CorruptShardError`) are raised to
        the caller; closing the generator early (``break`` then ``close()`` or dropping it) stops the thread.
        """
        order = self.plan(shuffle=shuffle, seed=seed, sample_ids=sample_ids)  # errors here, not at first next()
        return self._prefetched(order) if prefetch else self._direct(order)

    def _direct(self, order: list[tuple[int, list[int]]]) -> Iterator[tuple[str, Sample]]:
        for i, positions in order:
            ids, tensors, offsets = self._read_shard(i)
            for j in positions:
                yield ids[j], self._sample(tensors, offsets, j)
            del tensors

    def _prefetched(self, order: list[tuple[int, list[int]]]) -> Iterator[tuple[str, Sample]]:
        ready: queue.Queue = queue.Queue(maxsize=1)
        slots = threading.Semaphore(2)  # shards alive: the one consumed, the one read ahead
        stop = threading.Event()

        def produce() -> None:
            try:
                for i, positions in order:
                    slots.acquire()
                    if stop.is_set():
                        return
                    item = (positions, self._read_shard(i))
                    if stop.is_set():
                        return
                    ready.put(item)
                    del item
                ready.put(_END)
            except BaseException as exc:  # noqa: BLE001  (handed to the consumer, which raises it)
                ready.put(_Failed(exc))

        thread = threading.Thread(target=produce, name="FeatureStore.stream-prefetch", daemon=True)
        thread.start()
        try:
            held = False  # the previous shard's slot, released once the caller holds a sample of the next one
            while True:
                item = ready.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                positions, (ids, tensors, offsets) = item
                del item
                for n, j in enumerate(positions):
                    yield ids[j], self._sample(tensors, offsets, j)
                    if n == 0 and held:
                        slots.release()
                        held = False
                del tensors
                held = True
        finally:
            stop.set()
            slots.release(2)  # wake a producer waiting for a slot: it sees `stop` and returns
            while thread.is_alive():  # a producer blocked on put() needs the queue drained
                try:
                    ready.get(timeout=0.05)
                except queue.Empty:
                    pass
            thread.join()
