"""Checks of a tensor's contents done once per storage, not once per call.

Some checks must read a tensor's values on the host before a kernel reads through them (a layout's offsets
and indices, a permutation's range): a bad index is an out-of-bounds access on a GPU, not an exception. On a
GPU reading them synchronises with the device, and a training step calls the ops several times per layer on
the same, unchanging buffers: a sync each time would stall the CPU's kernel queueing on every call (and
make CUDA graph capture impossible). So a check that passed is remembered by what identifies the contents
without reading them: (device, data_ptr, _version, numel) of each checked tensor. ``_version`` moves on
every in-place write, so an edited tensor is checked again.

An address alone is not an identity: once a tensor is freed the caching allocator hands the same address to
the next tensor of that size (different contents, version 0, same numel). Each entry therefore keeps weak
references to the tensors it checked and counts only while they are all alive: a live tensor holds its
memory, so nothing else can be at that address (and it is asked again whether it still holds that memory at
that version). The cache is an LRU of bounded size, large enough for a few hundred sparse layers.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict

_MAX_ENTRIES = 8192
_validated: OrderedDict = OrderedDict()


def _storage_key(tensors):
    try:
        return tuple((t.device, t.data_ptr(), t._version, t.numel()) for t in tensors)
    except RuntimeError:  # inference-mode tensors carry no version counter: check those every call
        return None


def check_once(tag: str, tensors, check) -> None:
    """Run ``check()`` (which raises on bad contents) unless the same check (``tag``) already passed for these
    very tensors and none of them has been written to or freed since."""
    key = _storage_key(tensors)
    if key is not None:
        key = (tag, key)
        refs = _validated.get(key)
        if refs is not None:
            alive = [ref() for ref in refs]
            # Alive and still at that address and version: `t.data = other` or `t.set_()` keeps a tensor alive
            # but lets its old memory go to another tensor.
            if all(t is not None for t in alive) and _storage_key(alive) == key[1]:
                try:
                    _validated.move_to_end(key)
                except KeyError:  # evicted meanwhile by another thread: still checked, just not refreshed
                    pass
                return
    check()
    if key is not None:
        _validated[key] = tuple(weakref.ref(t) for t in tensors)
        while len(_validated) > _MAX_ENTRIES:
            _validated.popitem(last=False)


def clear() -> None:
    """Forget every passed check (tests; or after writing a tensor's memory behind PyTorch's back)."""
    _validated.clear()
