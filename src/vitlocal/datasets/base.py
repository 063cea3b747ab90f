"""What every dataset module shares: its download facts and the root check."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetNotFoundError


@dataclass(frozen=True)
class DatasetInfo:
    """Facts a user needs when a dataset is missing."""

    name: str
    url: str
    needs_account: bool
    layout: str  # the official directory tree, as a short multi-line sketch
    licence: str = ""

    def missing(self, root: str | os.PathLike, what: str | None = None) -> DatasetNotFoundError:
        """Build the error for a missing root (or a missing part of it)."""
        account = "needs a (free) account" if self.needs_account else "no account needed"
        where = f"{what} under {root}" if what else f"dataset root {root}"
        return DatasetNotFoundError(
            f"{self.name}: {where} not found.\n"
            f"Expected the official layout:\n{self.layout}\n"
            f"Download from {self.url} ({account}"
            + (f"; licence: {self.licence}" if self.licence else "")
            + "), unpack it there, or set the dataset's `root` in config.yaml."
        )


def require_dir(info: DatasetInfo, root: str | os.PathLike, *parts: str) -> Path:
    """Return ``root/parts`` if it is a directory, else raise ``info.missing``."""
    path = Path(root, *parts)
    if not Path(root).is_dir():
        raise info.missing(root)
    if not path.is_dir():
        raise info.missing(root, "/".join(parts))
    return path
