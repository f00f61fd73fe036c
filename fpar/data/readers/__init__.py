"""Dataset readers: one file per native format, each registering a `fpar.registry.ReaderSpec`.

`read_dataset` is the one way from a config's ``data`` section to a manifest: it picks the reader (``data.format``,
or detection when it is ``auto``), reads the root and names the reader in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ...config import DataConfig
from ...errors import FparError
from ...registry import ReaderSpec, reader_spec, reader_specs
from ..manifest import Manifest

logger = logging.getLogger(__name__)


def block_of(spec: ReaderSpec, data: DataConfig):
    """The reader's own config block (``data.<format>``), or None when it has no keys."""
    return getattr(data, spec.block or spec.name) if spec.config is not None else None


def detect_format(root: str | Path, data: DataConfig | None = None) -> ReaderSpec:
    """The one reader whose ``detect`` accepts ``root``; an error when none or several do."""
    root = Path(root)
    if not root.exists():
        raise FparError(
            f"dataset root {root} does not exist; create one with `fpar data synth {root}` or fix data.root"
        )
    if not root.is_dir():
        raise FparError(f"dataset root {root} is not a folder")
    found = [s for s in reader_specs().values() if s.detect(root, data)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(reader_specs())
    if not found:
        seen = ", ".join(sorted(p.name for p in root.iterdir() if not p.name.startswith("."))[:8]) or "nothing"
        raise FparError(
            f"{root} matches no known dataset format (found {seen}); set data.format to one of {names} and see "
            "README 'Datasets'"
        )
    raise FparError(f"{root} looks like several formats ({', '.join(s.name for s in found)}); set data.format")


def resolve_reader(data: DataConfig) -> ReaderSpec:
    if data.format != "auto":
        return reader_spec(data.format)
    spec = detect_format(data.root, data)
    logger.info("data.format=auto: %s read as %s", data.root, spec.name)
    return spec


def read_dataset(data: DataConfig) -> Manifest:
    """``data.root`` through its reader (``data.format``, detected when ``auto``) into a manifest."""
    spec = resolve_reader(data)
    return spec.read(data.root, block_of(spec, data), data)


def reader_of(manifest: Manifest) -> ReaderSpec:
    """The reader that wrote a manifest."""
    return reader_spec(manifest.layout)


def split_by_role(manifest: Manifest, train_role: str, test_role: str, what: str) -> tuple[list[int], list[int]]:
    """The usable segments whose annotations give them ``train_role`` / ``test_role`` (`VideoRecord.split`), for
    formats whose annotation files name the split (EGTEA, EPIC); ``what`` names the split in the error."""
    train = [i for i, v in enumerate(manifest.videos) if v.split == train_role and v.usable]
    test = [i for i, v in enumerate(manifest.videos) if v.split == test_role and v.usable]
    if not train or not test:
        raise FparError(
            f"{what} under {manifest.root} has {len(train)} usable {train_role} and {len(test)} {test_role} "
            "segments; `fpar data check --json` lists each unusable segment with the reason"
        )
    return train, test
