"""Argument checks and the "data not found" message shared by the dataset readers.

A missing dataset is the first error every new user meets, so its message says everything needed to fix
it: which dataset, which folder was searched, the exact files that would have been accepted, and how to
get them.
"""
from __future__ import annotations

import numbers
import os


def missing_data(dataset: str, root, expected: list[str], how_to_get: str, detail: str = "") -> FileNotFoundError:
    """The error for absent data. ``expected``: the accepted layouts, relative to ``root``."""
    if root is None:
        where = ("no data directory was given (root=None); pass the folder that holds the data "
                 "(or that should receive the download)")
        layouts = "\n".join(f"  - <root>/{e}" for e in expected)
    else:
        where = f"no data found in {os.path.abspath(root)!r} (root)"
        layouts = "\n".join(f"  - {os.path.join(os.path.abspath(root), e)}" for e in expected)
    detail = f"\n{detail}" if detail else ""
    expect = "Expected one of" if len(expected) > 1 else "Expected"
    return FileNotFoundError(f"{dataset}: {where}. {expect}:\n{layouts}{detail}\nTo get it: {how_to_get}")


def check_root(root):
    """``root`` as a str path (or None)."""
    if root is None:
        return None
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root: expected a str or os.PathLike folder, got {type(root).__name__}")
    return os.fspath(root)


def check_image_size(image_size, dataset: str, native: int | None = None) -> int | None:
    """``image_size`` as None or a positive int; with ``native`` set, only None or ``native`` is allowed
    (those datasets are not resized here: a model for them expects their native size)."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise TypeError(f"image_size: expected an int or None, got {type(image_size).__name__}")
    if native is not None and image_size != native:
        raise ValueError(f"image_size: {dataset} images are {native}x{native} and are not resized; expected "
                         f"None or {native}, got {image_size}")
    if image_size < 1:
        raise ValueError(f"image_size: expected a positive int, got {image_size}")
    return int(image_size)
