"""Checkpoints: one ``.npz`` of plain arrays, written atomically, read without pickle.

Layout: ``param/<name>`` (weights), ``optim/<key>`` (optimizer state) and
``meta/<key>`` (epoch, configuration and history as JSON text, RNG state).
``meta/digest`` is a SHA-256 over every other entry's name, dtype, shape and
bytes, so a modified or damaged file is refused rather than half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError
from .fileio import atomic_write

FORMAT = "npgrad-checkpoint-1"


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path: str | os.PathLike, params: dict[str, np.ndarray], optim: dict[str, np.ndarray],
         meta: dict[str, Any]) -> Path:  # fmt: skip
    """Write a checkpoint atomically: a reader sees the old file or the new, never half."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optim.items()})
    arrays["meta/format"] = np.array(FORMAT)
    for k, v in meta.items():
        arrays[f"meta/{k}"] = np.array(json.dumps(v))
    arrays["meta/digest"] = np.array(_digest(arrays))
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Read ``(params, optim, meta)``; any defect raises :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.npz"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: corrupt or not an npz checkpoint (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc):
            raise CheckpointError(
                f"{path}: contains pickled objects; npgrad never loads pickles (unsafe)"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{path}: corrupt or not an npz checkpoint ({exc})") from None
    if arrays.get("meta/format") is None or str(arrays["meta/format"]) != FORMAT:
        raise CheckpointError(f"{path}: not an npgrad checkpoint (no {FORMAT} marker)")
    digest = arrays.pop("meta/digest", None)
    if digest is None or str(digest) != _digest(arrays):
        raise CheckpointError(f"{path}: content does not match its digest (modified or damaged)")
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
    optim = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
    meta = {}
    for k, v in arrays.items():
        if k.startswith("meta/") and k != "meta/format":
            try:
                meta[k[5:]] = json.loads(str(v))
            except json.JSONDecodeError:
                raise CheckpointError(f"{path}: metadata {k} is not valid JSON") from None
    return params, optim, meta
