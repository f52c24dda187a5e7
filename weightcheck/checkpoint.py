"""An HF checkpoint directory as a loader sees it (``Checkpoint``), and what a loader reports
back about it (``LoadReport``).

Loaders read it through ``Checkpoint`` (``weights()`` in stored order, ``weight_groups()`` for
loaders that load group by group, or the files themselves at ``path``); the suite writes it with
``weightcheck.fixtures.checkpoint``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory as a loader sees it.

    ``weights()`` yields ``(name, tensor)`` in stored order: files in the order the index names
    them (natural sort of file names, as vLLM reads them), and inside each file in the order the
    bytes are laid out.  Only files named by the index are read.
    """

    path: Path
    config: Mapping[str, Any] = field(compare=False)

    @classmethod
    def open(cls, path: str | Path) -> "Checkpoint":
        path = Path(path)
        config = json.loads((path / CONFIG_FILE).read_text())
        return cls(path=path, config=config)

    def files(self) -> list[Path]:
        index = self.path / INDEX_FILE
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return [self.path / f for f in sorted(set(weight_map.values()))]
        return [self.path / SINGLE_FILE]

    def names(self) -> list[str]:
        return [name for file in self.files() for name in stored_order(file)]

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every tensor of every file the index names, files in index order, each in its
        stored order: duplicates and tensors the index maps elsewhere included, as they are."""
        for file in self.files():
            yield from self.file_weights(file)

    def weight_groups(self) -> Iterator[Iterator[tuple[str, torch.Tensor]]]:
        """The same stream in groups, for loaders that call their model's ``load_weights`` once
        per group (vLLM's ``AutoWeightsLoader`` re-enters per run of names): one group per file
        here; the suite also splits the stream at arbitrary points, so state a model keeps
        between calls (a weight waiting for its scale) must survive them."""
        for file in self.files():
            yield self.file_weights(file)

    def file_weights(self, file: Path) -> Iterator[tuple[str, torch.Tensor]]:
        """One file's ``(name, tensor)`` in stored order: for loaders that read file by file.
        A file that is not valid safetensors raises ``ValueError`` naming it."""
        names = stored_order(file)
        try:
            handle = safe_open(str(file), framework="pt")
        except Exception as exc:  # safetensors' own error types
            raise ValueError(f"{Path(file).name} is not a readable safetensors file: {exc}") from exc
        with handle as f:
            for name in names:
                yield name, f.get_tensor(name)


def stored_order(file: Path) -> list[str]:
    """Tensor names of one safetensors file in the order of their data offsets; a header that
    cannot be read raises ``ValueError`` naming the file."""
    with open(file, "rb") as fh:
        size = Path(file).stat().st_size
        try:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > size - 8:
                raise ValueError(f"its header length {length} runs past the end of the file ({size} bytes)")
            header = json.loads(fh.read(length))
        except (struct.error, ValueError) as exc:
            raise ValueError(f"{Path(file).name} is not a readable safetensors file: {exc}") from exc
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


@dataclass(frozen=True)
class LoadReport:
    """What ``load`` may return instead of a plain set, like transformers' loading info.

    ``loaded``: the runtime parameter names the call initialised from the checkpoint (None:
    the loader does no tracking).  ``unexpected``: checkpoint tensor names the model has no
    place for, or that appear more than once, which the loader skipped and reports instead of
    raising.  A plain set is ``LoadReport(loaded=that set)``.
    """

    loaded: frozenset[str] | None
    unexpected: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.loaded is not None:
            object.__setattr__(self, "loaded", frozenset(self.loaded))
        object.__setattr__(self, "unexpected", frozenset(self.unexpected))
