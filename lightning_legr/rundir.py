"""The run directory: what makes two runs the same run, and what each finished budget left behind.

Every path stored in it is relative to it, so a run directory can be moved or copied and the same
command resumes there; absolute paths are made only when they are shown or returned.
"""

import os
from typing import Any, Dict, List, Optional

from lightning_legr.core._io import PathLike, read_json, remove_stale_temporaries, write_json
from lightning_legr.core.errors import ConfigurationError

__all__ = ["RunDirectory", "budget_name", "describe"]

FORMAT = "lightning-legr/run"


def budget_name(budget: float) -> str:
    """A budget in file names: two decimals (0.30), more only when needed (0.333)."""
    return f"{budget:.2f}" if round(budget, 2) == budget else f"{budget:g}"


def describe(value: Any) -> Any:
    """``value`` as JSON that is the same for equal settings: objects by their class, never by address."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if hasattr(value, "tolist") and getattr(value, "ndim", 1) == 0:  # numpy and torch scalars
        return describe(value.tolist())
    cls = value if isinstance(value, type) else type(value)
    return f"<{cls.__module__}.{cls.__qualname__}>"


def _flatten(data: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class RunDirectory:
    """A LeGR run's folder: its settings (``run.json``), its finished budgets (``budgets.json``), the
    files of the search and of every budget.

    Args:
        path: the folder; made when first written to.
        kind: the kind of the run's budgets, which names their folders: ``flops_0.30``, ``params_0.30``.
    """

    RUN = "run.json"
    BASE = "base.ckpt"
    SEARCH_STATE = "search_state.json"
    TRANSFORM = "transform.json"
    BUDGETS = "budgets.json"
    STRUCTURE = "structure.txt"  # every conv and linear layer: prunable, or why not
    LAYERS = "layers.json"  # the same, as JSON
    LATENCY_TABLE = "latency_table.json"  # per-layer latency of a run on latency budgets, reused on resume
    PRUNED = "pruned.ckpt"
    LAST = "last.ckpt"
    ONNX = "model.onnx"  # a budget's network exported to ONNX (export_onnx=True)
    BASE_ONNX = "base.onnx"
    PATHS = ("checkpoint", "onnx")  # the keys of a results row that hold paths

    def __init__(self, path: PathLike, kind: str = "flops") -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigurationError(f"`dirpath` must be a path (a string), got {type(path).__name__} {path!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.kind = kind

    def __repr__(self) -> str:
        return f"RunDirectory({self.path!r})"

    def file(self, *parts: str) -> str:
        """The absolute path of a file in the run directory."""
        return os.path.join(self.path, *parts)

    def exists(self, *parts: str) -> bool:
        return os.path.exists(self.file(*parts))

    def relative(self, path: PathLike) -> str:
        """``path`` relative to the run directory, with forward slashes (the same on every system)."""
        return os.path.relpath(os.path.abspath(os.fspath(path)), self.path).replace(os.sep, "/")

    def absolute(self, relative: str) -> str:
        return os.path.normpath(self.file(*relative.split("/")))

    def budget_dir(self, budget: float) -> str:
        return self.file(f"{self.kind}_{budget_name(budget)}")

    # ------------------------------------------------------------------ settings
    def check_settings(self, settings: Dict[str, Any]) -> None:
        """Refuse a run directory that holds another run: other settings, model, data or recipe.

        Raises:
            ConfigurationError: naming every setting that differs, with both values.
        """
        if not self.exists(self.RUN):
            return
        saved = read_json(self.file(self.RUN))
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ConfigurationError(
                f"`dirpath` {self.path} holds a {self.RUN} of an earlier lightning-legr version or of another tool."
                " Use another dirpath, or delete it to start over."
            )
        there, here = _flatten(saved.get("settings", {})), _flatten(describe(settings))
        differs = sorted(k for k in set(there) | set(here) if there.get(k, "<not set>") != here.get(k, "<not set>"))
        if differs:
            details = "; ".join(f"{k}: {there.get(k, '<not set>')!r} there, {here.get(k, '<not set>')!r} here" for k in differs[:6])
            more = f" (and {len(differs) - 6} more)" if len(differs) > 6 else ""
            raise ConfigurationError(
                f"`dirpath` {self.path} holds another LeGR run; these settings differ: {details}{more}. Use another"
                " dirpath, or delete it to start over."
            )

    def write_settings(self, settings: Dict[str, Any]) -> None:
        if not self.exists(self.RUN):
            write_json(self.file(self.RUN), {"format": FORMAT, "settings": describe(settings)})

    # ------------------------------------------------------------------ budgets
    def finished(self) -> Dict[float, Dict[str, Any]]:
        """The rows of the budgets an earlier run finished whose checkpoint is still there, by budget;
        checkpoint paths absolute."""
        if not self.exists(self.BUDGETS):
            return {}
        rows = read_json(self.file(self.BUDGETS)).get("rows", [])
        done = {}
        for row in rows:
            row = {k: self.absolute(v) if k in self.PATHS and v else v for k, v in row.items()}
            if os.path.exists(row["checkpoint"]):
                done[row["budget"]] = row
        return done

    def save_finished(self, row: Dict[str, Any]) -> None:
        """Record a finished budget (its checkpoint path stored relative to the run directory)."""
        rows = []
        if self.exists(self.BUDGETS):
            rows = [r for r in read_json(self.file(self.BUDGETS)).get("rows", []) if r["budget"] != row["budget"]]
        rows.append(self._relative_paths(row))
        write_json(self.file(self.BUDGETS), {"rows": sorted(rows, key=lambda r: -r["budget"])})

    def portable(self, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Rows with their paths (checkpoint, ONNX file) relative to the run directory, for its own files."""
        return [self._relative_paths(r) for r in rows]

    def _relative_paths(self, row: Dict[str, Any]) -> Dict[str, Any]:
        return {k: self.relative(v) if k in self.PATHS and v else v for k, v in row.items()}

    def last_checkpoint(self, budget: float) -> Optional[str]:
        path = os.path.join(self.budget_dir(budget), self.LAST)
        return path if os.path.exists(path) else None

    def remove_stale_temporaries(self) -> List[str]:
        """Temporaries of this package left by a process killed mid-write; other processes' stay."""
        return remove_stale_temporaries(self.path) if os.path.isdir(self.path) else []
