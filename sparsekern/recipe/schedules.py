"""Schedules for the recipe's ghost weights α (and the label-smoothing ε): a value as a function of
training progress p ∈ [0, 1] (the fraction of iterations done).

- ``constant``: ``start`` all the way (the official code's ghosts: α = 1 for the whole run);
- ``linear``: from ``start`` at p = 0 to ``end`` at p = ``fraction``, then ``end``;
- ``cosine``: the same endpoints along half a cosine (flat at both ends).

A schedule is a pure function of p, so a resumed run that passes the same progress gets the same value: the
recipe saves the last progress in its ``state_dict``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

KINDS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class Schedule:
    kind: str = "linear"
    start: float = 1.0
    end: float = 0.0
    fraction: float = 0.3   # of training over which the value moves from start to end

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        if (isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float))
                or not 0.0 < self.fraction <= 1.0):
            raise ValueError(f"fraction: expected a number in (0, 1], got {self.fraction!r}")

    def __call__(self, progress: float) -> float:
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress: expected the fraction of training done, in [0, 1], got {progress!r}")
        if self.kind == "constant":
            return float(self.start)
        t = min(progress / self.fraction, 1.0)
        if t >= 1.0:
            return float(self.end)  # exactly end from there on: ghosts are removed when α reaches 0
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        return cls(**d)
