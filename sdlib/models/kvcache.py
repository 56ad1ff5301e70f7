"""A key/value cache that appends in place: the decoding state both models keep between forwards.

transformers' ``DynamicCache`` appends a step's keys and values with ``torch.cat``, which allocates a new tensor and
copies the whole cache at every decode step, in every layer. On a GPU that copy is cheap next to reading the weights;
on these CPUs it is not, and its cost depends on the memory allocator's state (whether the fresh buffer comes from
the heap or a new mapping that must be faulted in), so it made the scale model's decode step, and with it the
calibrated ratio ``P_v/d_v``, depend on what the process had done before rather than on the model.

:class:`KVCache` keeps each layer's keys and values in a buffer with spare room: appending writes into the buffer
(growing it by doubling when full, so a generation reallocates O(log n) times), cropping only moves the length, and
the attention reads a view of the filled part. It is a ``DynamicCache`` subclass, so every transformers model that
accepts a cache accepts it, and the logits are identical to ``DynamicCache``'s (a test checks this).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

DEFAULT_CAPACITY = 1024  # positions reserved at the first append (prompt + answer fit without growing)


class AppendLayer(DynamicLayer):
    """One layer's keys/values ``[batch, heads, capacity, head_dim]`` with a fill length."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__()
        self.capacity = int(capacity)
        self.length = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    # transformers reads (and, in a few helpers, assigns) ``keys``/``values``: they are views of the filled part
    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._keys is None else self._keys[..., : self.length, :]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._keys = value
        if value is not None:
            self.length = int(value.shape[-2])

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._values is None else self._values[..., : self.length, :]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._values = value

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        room = max(self.capacity, int(key_states.shape[-2]))
        self._keys = key_states.new_empty(*key_states.shape[:-2], room, key_states.shape[-1])
        self._values = value_states.new_empty(*value_states.shape[:-2], room, value_states.shape[-1])
        self.length = 0
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        room = max(needed, 2 * int(self._keys.shape[-2]))
        for name in ("_keys", "_values"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:-2], room, old.shape[-1])
            new[..., : self.length, :] = old[..., : self.length, :]
            setattr(self, name, new)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + int(key_states.shape[-2])
        if end > self._keys.shape[-2]:
            self._grow(end)
        self._keys[..., self.length:end, :] = key_states
        self._values[..., self.length:end, :] = value_states
        self.length = end
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` positions (transformers' convention: a negative count)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop({tokens_to_remove}): expected a negative count of positions to drop")
        self.length = max(0, self.length + int(tokens_to_remove))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self._keys = self.keys.repeat_interleave(repeats, dim=0)
            self._values = self.values.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._keys = self.keys[indices].contiguous()
            self._values = self.values[indices].contiguous()

    def reset(self) -> None:
        self._keys = self._values = None
        self.length = 0
        self.is_initialized = False


class KVCache(DynamicCache):
    """A ``DynamicCache`` whose layers append in place (:class:`AppendLayer`), for the decoder stack of ``config``."""

    def __init__(self, config, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__(config=config)
        self.layers = [AppendLayer(capacity) for _ in self.layers]
