"""Fetch a dataset archive, only when asked to: to a temporary file, md5-checked, then renamed into place.

The archive appears under its final name only once it is complete and its checksum matches, so an
interrupted or corrupted download never leaves a file that a later run would trust.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request

from tqdm import tqdm

from ..atomic_file import atomic_write

TIMEOUT_S = 30
CHUNK_BYTES = 1 << 20


def download(url: str, path: str, md5: str) -> None:
    """Download ``url`` to ``path``; raises ValueError (and saves nothing) when the md5 is not ``md5``."""
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check, not security: allowed on FIPS systems
    name = os.path.basename(path)
    try:
        # looked up at call time (not imported by name) so tests can substitute urlopen
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        raise ConnectionError(f"download: could not fetch {url} ({e}); download it by hand and put it at "
                              f"{path}") from e
    with response:
        headers = getattr(response, "headers", None)
        length = headers.get("Content-Length") if headers is not None else None
        total = int(length) if length and str(length).isdigit() else None
        with atomic_write(path) as f, tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (TimeoutError, ConnectionError, urllib.error.URLError) as e:
                    raise ConnectionError(f"download: {url} broke off after {bar.n} bytes ({e}); nothing was "
                                          f"saved, try again or download it by hand to {path}") from e
                if not chunk:
                    break
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            # raising inside the block makes atomic_write delete the temporary file: nothing is left behind
            if digest.hexdigest() != md5:
                raise ValueError(f"download: {url} has md5 {digest.hexdigest()}, expected {md5} (corrupt or "
                                 f"incomplete download); nothing was saved to {path}")
