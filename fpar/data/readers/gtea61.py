"""GTEA61 in its two on-disk layouts (reference-spec §7.1): the course layout (``data.format=gtea61``) and the
original Ego-RNN layout (``data.format=egornn``). Both are read by `fpar.data.layout.discover` and share the
``data.gtea61`` block: the frames folder name and the subject split.

Splits are by subject (default train S1, S3, S4 / test S2, the report's); ``folds`` gives leave-one-subject-out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...errors import FparError
from ...registry import ReaderSpec, register_reader
from ..layout import discover, gtea_vocabulary
from ..manifest import Manifest

COURSE_FOLDERS = ("processed_frames2", "processed_frames")


@dataclass
class GTEA61Config:
    """``data.gtea61.*``. The keys were ``data.frames_dir`` / ``data.train_subjects`` / ``data.test_subjects`` in
    fpar 0.1.0, which still work as aliases."""

    frames_dir: str = "processed_frames2"  # some GTEA61 copies call it processed_frames
    train_subjects: list[str] = field(default_factory=lambda: ["S1", "S3", "S4"])
    test_subjects: list[str] = field(default_factory=lambda: ["S2"])

    def validate(self, cfg) -> None:
        overlap = set(self.train_subjects) & set(self.test_subjects)
        if overlap:
            raise FparError(
                f"subject(s) {', '.join(sorted(overlap))} are in both data.gtea61.train_subjects and test_subjects"
            )


ALIASES = {"frames_dir": "frames_dir", "train_subjects": "train_subjects", "test_subjects": "test_subjects"}


def _course(root: Path, data=None) -> bool:
    names = (*COURSE_FOLDERS, data.gtea61.frames_dir) if data is not None else COURSE_FOLDERS
    return any((root / name).is_dir() for name in names)


def _egornn(root: Path) -> bool:
    """``frames/<subject>/<class>/...``: folders two levels down (other datasets' ``frames/<clip>/`` hold files)."""
    frames = root / "frames"
    if not frames.is_dir():
        return False
    try:
        for i, sub in enumerate(frames.iterdir()):
            if sub.is_dir() and any(c.is_dir() for c in sub.iterdir()):
                return True
            if i > 20:
                break
    except OSError:
        return True  # unreadable: let the reader say so
    return not any(frames.iterdir())


def _read(layout: str):
    def read(root, block: GTEA61Config, data) -> Manifest:
        return discover(root, layout=layout, frames_dir=block.frames_dir)

    return read


def split(manifest: Manifest, block: GTEA61Config) -> tuple[list[int], list[int]]:
    block.validate(None)
    train = manifest.select(block.train_subjects, key="data.gtea61.train_subjects")
    test = manifest.select(block.test_subjects, key="data.gtea61.test_subjects")
    return train, test


def folds(manifest: Manifest, block: GTEA61Config) -> list[dict]:
    """Leave-one-subject-out: one fold per subject, trained on the others."""
    subs = list(manifest.subjects())
    return [{"data.gtea61.train_subjects": [s for s in subs if s != t], "data.gtea61.test_subjects": [t]} for t in subs]


def describe_split(block: GTEA61Config) -> str:
    return f"train {','.join(block.train_subjects)} / test {','.join(block.test_subjects)}"


_COMMON = dict(
    split=split,
    config=GTEA61Config,
    aliases=ALIASES,
    folds=folds,
    describe_split=describe_split,
    vocabulary_from_classes=gtea_vocabulary,
    block="gtea61",
)

register_reader(
    ReaderSpec(
        name="gtea61",
        read=_read("gtea61"),
        detect=_course,
        description="GTEA61, course layout: processed_frames2/S1/<class>/<inst>/rgb, flow_x_processed/, mmaps",
        **_COMMON,
    )
)
register_reader(
    ReaderSpec(
        name="egornn",
        read=_read("egornn"),
        detect=lambda root, data=None: _egornn(root) and not _course(root, data),
        description="GTEA61, original Ego-RNN layout: frames/S1/<class>/<inst>/image_00001.jpg, flow_x/, flow_y/",
        **_COMMON,
    )
)
