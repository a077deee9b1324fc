"""Deterministic payloads, so a test can check a download by hash without storing it."""

import random
import tempfile
from pathlib import Path

SIZE = 20 * 1024 * 1024


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def big_file(size: int = SIZE) -> Path:
    """Write the payload once per machine and reuse it."""
    path = Path(tempfile.gettempdir()) / f"testproject-payload-{size}.bin"
    if not path.exists() or path.stat().st_size != size:
        tmp = path.with_suffix(f".{random.getrandbits(32)}.tmp")
        tmp.write_bytes(payload(size))
        tmp.replace(path)
    return path
