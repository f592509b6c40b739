"""Names of everything a run puts on disk (esi-acme's layout, which downstream code reads).

For a function ``f`` with ``n`` calls, inside the output folder::

    f.h5                          container: comp_{i} -> f_payload/f_{i}.h5 (relative links)
    f_payload/f_{i}.h5            one file per call: result_0, result_1, ... at its root
    f_payload/f_{i}.pickle        a call whose values HDF5 cannot hold, pickled instead
    f_{i}.pickle                  write_pickle=True: one pickle per call, no container
    ACME_f_<YYYYMMDD-hhmmss>.log  the run's log
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass

__all__ = ["OutputLayout", "default_output_dir", "file_stem"]


def file_stem(func) -> str:
    """A file-system friendly name for ``func`` (``<lambda>`` becomes ``lambda``)."""
    name = getattr(func, "__name__", None) or type(func).__name__
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")
    return stem or "func"


def default_output_dir(base: str = ".") -> str:
    """``ACME_YYYYMMDD-hhmmss-ffffff`` (creation time) under ``base``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return os.path.abspath(os.path.join(base, f"ACME_{stamp}"))


@dataclass(frozen=True)
class OutputLayout:
    """Paths of one run's files. ``output_dir`` is absolute."""

    output_dir: str
    stem: str

    @property
    def container(self) -> str:
        return os.path.join(self.output_dir, f"{self.stem}.h5")

    @property
    def payload_dir_name(self) -> str:
        return f"{self.stem}_payload"

    @property
    def payload_dir(self) -> str:
        return os.path.join(self.output_dir, self.payload_dir_name)

    def payload(self, index: int) -> str:
        return os.path.join(self.payload_dir, f"{self.stem}_{index}.h5")

    def payload_link(self, index: int) -> str:
        """The payload's path relative to the container (so the folder can move)."""
        return f"{self.payload_dir_name}/{self.stem}_{index}.h5"

    def fallback_pickle(self, index: int) -> str:
        return os.path.join(self.payload_dir, f"{self.stem}_{index}.pickle")

    def pickle(self, index: int) -> str:
        return os.path.join(self.output_dir, f"{self.stem}_{index}.pickle")

    @property
    def parts_dir(self) -> str:
        """Per-call scratch files of a single-file run, merged and removed at the end."""
        return os.path.join(self.output_dir, f".{self.stem}_parts")

    def part(self, index: int) -> str:
        return os.path.join(self.parts_dir, f"{self.stem}_{index}.h5")

    def logfile(self) -> str:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return os.path.join(self.output_dir, f"ACME_{self.stem}_{stamp}.log")
