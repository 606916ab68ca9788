"""Atomic file writes (an interrupt never leaves half a file behind), strict JSON, and safe loading."""

import hashlib
import json
import math
import os
import pickle
import re
import socket
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Tuple, Union

import torch

from lightning_legr.core.errors import ConfigurationError

__all__ = ["atomic_path", "write_json", "write_text", "read_json", "save_torch", "load_torch", "remove_stale_temporaries"]

PathLike = Union[str, "os.PathLike[str]"]
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\.tmp-legr-(\d+)-([0-9a-f]{8})-")


@contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The temporary's name carries this process's id and host, so that :func:`remove_stale_temporaries`
    removes only those of processes that died, never a live one's.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-legr-{os.getpid()}-{_HOST}-", suffix=os.path.basename(path), dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(directory: PathLike) -> List[str]:
    """Remove the temporaries :func:`atomic_path` left in ``directory`` (recursively) when their process was
    killed mid-write. Files of live processes, of other hosts, and anything not ours stay. Returns what went."""
    removed = []
    for root, _, files in os.walk(os.fspath(directory)):
        for name in files:
            match = _TEMPORARY.match(name)
            if match and match.group(2) == _HOST and not _alive(int(match.group(1))):
                path = os.path.join(root, name)
                try:
                    os.remove(path)
                    removed.append(path)
                except FileNotFoundError:  # its owner, or another cleaner, got there first
                    pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def strict_json(data: Any) -> Tuple[Any, List[str]]:
    """``data`` with every NaN or infinite float replaced by None (JSON has neither), and where they were."""
    replaced: List[str] = []

    def visit(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            replaced.append(where or "$")
            return None
        if isinstance(value, dict):
            return {k: visit(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [visit(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    return visit(data, ""), replaced


def write_json(path: PathLike, data: Any) -> None:
    """Write strict JSON atomically. NaN and infinity become null; a dict then says where, under ``non_finite``."""
    data, replaced = strict_json(data)
    if replaced and isinstance(data, dict):
        data["non_finite"] = {"note": "these values were NaN or infinite and are written as null", "keys": replaced}
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")


def write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def read_json(path: PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def save_torch(path: PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(file: Any, map_location: Any = "cpu", name: Optional[str] = None) -> Any:
    """Load a torch file (a path or a binary file object) with ``weights_only=True``: tensors and plain
    containers only, never code. ``name`` is what error messages call it (default: the path).

    Raises:
        ConfigurationError: if the file holds anything else (a pickled object that loading would run).
    """
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()
        detail = next((line.strip() for line in reason if "Unsupported global" in line or "GLOBAL" in line), reason[0])
        raise ConfigurationError(
            f"{name or (os.fspath(file) if not hasattr(file, 'read') else 'The file')} is not a plain checkpoint: it holds"
            f" Python objects that loading would execute ({detail}). lightning-legr loads checkpoints with"
            " weights_only=True and never runs code from a file; save tensors, numbers, strings and plain"
            " containers only."
        ) from None
