"""The learned per-group affine transform ``I = alpha * score + kappa``, and its JSON file."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from lightning_legr.core._io import PathLike, read_json, write_json
from lightning_legr.core.errors import ConfigurationError, MissingFileError

__all__ = ["Transform"]

FORMAT = "lightning-legr/transform"
VERSION = 1


@dataclass
class Transform:
    """One ``(alpha, kappa)`` per channel group, tied to the groups it was learned on.

    Args:
        alpha: per-group scale (positive).
        kappa: per-group shift.
        groups: ``(root module, width)`` of every group, from ``Structure.signature()``; a transform
            is refused on a model whose groups differ.
        criterion: name of the base criterion the scores were computed with.
        info: free-form facts about how it was learned (fitness, budget, generations...).

    Example::

        >>> t = Transform.identity([("conv1", 16), ("layer1.0.conv1", 16)])
        >>> t.alpha.tolist(), t.kappa.tolist()
        ([1.0, 1.0], [0.0, 0.0])
    """

    alpha: np.ndarray
    kappa: np.ndarray
    groups: List[Tuple[str, int]]
    criterion: str = "l2"
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.alpha = np.asarray(self.alpha, dtype=np.float64)
        self.kappa = np.asarray(self.kappa, dtype=np.float64)
        self.groups = [(str(n), int(w)) for n, w in self.groups]
        if not (len(self.alpha) == len(self.kappa) == len(self.groups)):
            raise ValueError(
                f"A transform needs one alpha and one kappa per group: got {len(self.alpha)} alphas,"
                f" {len(self.kappa)} kappas for {len(self.groups)} groups."
            )
        if not (np.isfinite(self.alpha).all() and np.isfinite(self.kappa).all()):
            raise ValueError("A transform's alpha and kappa must be finite numbers.")
        if (self.alpha <= 0).any():
            raise ValueError("A transform's alpha must be positive: it rescales scores, it must not invert them.")

    @classmethod
    def identity(cls, groups: Sequence[Tuple[str, int]], criterion: str = "l2") -> "Transform":
        """alpha = 1, kappa = 0: the plain global ranking by the base criterion."""
        return cls(np.ones(len(groups)), np.zeros(len(groups)), list(groups), criterion)

    def check(self, groups: Sequence[Tuple[str, int]], criterion: str, source: str = "The transform") -> None:
        """Raise a clear ValueError unless this transform was learned on these groups and criterion."""
        groups = [(str(n), int(w)) for n, w in groups]
        if self.groups != groups:
            first = next(
                (i for i, (a, b) in enumerate(zip(self.groups, groups)) if a != b), min(len(self.groups), len(groups))
            )
            mine = self.groups[first] if first < len(self.groups) else "nothing"
            theirs = groups[first] if first < len(groups) else "nothing"
            raise ConfigurationError(
                f"{source} was learned on another model: it has {len(self.groups)} channel groups, this model"
                f" has {len(groups)}; group {first} is {mine} there and {theirs} here. Learn a transform for"
                " this model (or load the matching model)."
            )
        if self.criterion != criterion:
            raise ConfigurationError(
                f"{source} was learned with criterion {self.criterion!r}, but the pruner uses {criterion!r};"
                f" pass criterion={self.criterion!r}."
            )

    # ------------------------------------------------------------------ files
    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "criterion": self.criterion,
            "groups": [
                {"name": n, "width": w, "alpha": float(a), "kappa": float(k)}
                for (n, w), a, k in zip(self.groups, self.alpha, self.kappa)
            ],
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "transform") -> "Transform":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigurationError(f"{source} is not a lightning-legr transform file (no 'format': '{FORMAT}').")
        if data.get("version", 0) > VERSION:
            raise ConfigurationError(f"{source} has version {data['version']}; this lightning-legr reads up to {VERSION}.")
        groups = data["groups"]
        return cls(
            alpha=[g["alpha"] for g in groups],
            kappa=[g["kappa"] for g in groups],
            groups=[(g["name"], g["width"]) for g in groups],
            criterion=data.get("criterion", "l2"),
            info=data.get("info", {}),
        )

    def save(self, path: PathLike) -> None:
        """Write the transform as JSON (atomically)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: PathLike) -> "Transform":
        """Read a transform written by :meth:`save`."""
        try:
            data = read_json(path)
        except FileNotFoundError:
            raise MissingFileError(f"No transform file at {path}") from None
        except ValueError as err:
            raise ConfigurationError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(data, source=str(path))

    def __repr__(self) -> str:
        spread = f"alpha {self.alpha.min():.3g}..{self.alpha.max():.3g}" if len(self.alpha) else "empty"
        return f"Transform({len(self.groups)} groups, {spread}, criterion={self.criterion!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Transform):
            return NotImplemented
        return (
            self.groups == other.groups
            and self.criterion == other.criterion
            and np.array_equal(self.alpha, other.alpha)
            and np.array_equal(self.kappa, other.kappa)
        )
