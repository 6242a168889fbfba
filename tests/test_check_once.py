"""sparsekern.check_once: a passed check is remembered per (tag, tensor storage) until the tensor changes or
dies; a failed one never is."""
import gc

import pytest
import torch

from sparsekern import check_once


@pytest.fixture(autouse=True)
def _fresh():
    check_once.clear()
    yield
    check_once.clear()


def test_remembered_until_written_and_per_tag():
    t = torch.arange(5)
    calls = []
    for _ in range(3):
        check_once.check_once("a", (t,), lambda: calls.append("a"))
    assert calls == ["a"]
    check_once.check_once("b", (t,), lambda: calls.append("b"))  # another check of the same tensor
    assert calls == ["a", "b"]
    t[0] = 7  # an in-place write moves the version counter: checked again
    check_once.check_once("a", (t,), lambda: calls.append("a"))
    assert calls == ["a", "b", "a"]


def test_a_failed_check_is_not_remembered():
    t = torch.arange(3)

    def bad():
        raise ValueError("bad contents")
    for _ in range(2):
        with pytest.raises(ValueError, match="bad contents"):
            check_once.check_once("a", (t,), bad)


def test_a_dead_tensor_does_not_vouch_for_its_address(monkeypatch):
    monkeypatch.setattr(check_once, "_storage_key", lambda tensors: ("same",))
    calls = []
    t = torch.arange(4)
    check_once.check_once("a", (t,), lambda: calls.append(1))
    del t
    gc.collect()
    check_once.check_once("a", (torch.arange(4),), lambda: calls.append(2))
    assert calls == [1, 2]


def test_a_live_tensor_that_gave_up_its_memory_does_not_vouch_for_it():
    calls = []
    t = torch.arange(6)
    check_once.check_once("a", (t,), lambda: calls.append(1))
    with torch.no_grad():
        t.set_(torch.arange(6) + 1)  # t lives on, with other memory: its old key must not vouch any more
    check_once.check_once("a", (t,), lambda: calls.append(2))
    assert calls == [1, 2]
