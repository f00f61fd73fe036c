"""What every dataset reader produces: a :class:`Manifest` of videos (segments) and its :class:`Vocabulary`.

A reader (``fpar/data/readers/``) turns a dataset root in its native format into one manifest: a row per video
segment with its subject (participant), its label ids (action; verb and noun where the format has them), the ordered
frame files of each modality (so the frame range and the mapping of an RGB frame index to its flow are explicit:
entry k of ``rgb`` is frame k of the segment, entry k of ``flow_x`` the flow that starts at frame k·``flow_stride``;
stride 1 everywhere but EPIC-55's half-rate flow) and the problems found. A frame is a path, a tar member
(``TAR::MEMBER``) or a video frame (``VIDEO::K``), and long segments list theirs lazily (`fpar.data.frames`).
Everything downstream (datasets, metrics, checkpoints) reads only this.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FparError


@dataclass
class Problem:
    """One thing found wrong with a dataset, and what fpar does about it."""

    kind: str  # hidden_file | duplicate_file | missing_mmap | missing_modality | empty_video | too_short |
    #            count_mismatch | unreadable_image | class_one_split | empty_class | stray_file | bad_name
    path: str  # relative to the dataset root
    message: str
    fatal: bool = False  # True when the video cannot be used at all
    line: int | None = None  # the annotation file's line (1-based) the problem comes from, when there is one


@dataclass
class VideoRecord:
    """One video segment. ``cls`` is its action name; ``verb`` / ``noun`` are set by readers whose format has them."""

    subject: str
    cls: str
    instance: str
    rgb: list[str]  # absolute paths, in frame order
    flow_x: list[str] = field(default_factory=list)
    flow_y: list[str] = field(default_factory=list)
    mmaps: list[str] = field(default_factory=list)  # one per rgb frame after the nearest-map fix; [] when absent
    label: int = -1
    usable: bool = True
    verb: str | None = None
    noun: str | None = None
    verb_label: int = -1
    noun_label: int = -1
    split: str = ""  # the role the format's annotations give the segment (EGTEA: train/test; EPIC: train/validation)
    flow_stride: int = 1  # flow k starts at RGB frame k * flow_stride (EPIC-55: 2, flow at half the frame rate)
    flow_scale: float = 1.0  # multiplies the decoded flow into fpar's encoding (bound 20 px; EPIC-55 25 -> 1.25)
    meta: dict[str, Any] = field(default_factory=dict)  # format-specific facts (all nouns, narration id, times)

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.cls}/{self.instance}"

    @property
    def num_frames(self) -> int:
        return len(self.rgb)

    @property
    def num_flows(self) -> int:
        return min(len(self.flow_x), len(self.flow_y))


@dataclass
class Vocabulary:
    """The class names of a dataset, as its reader defines them.

    Attributes:
        actions: action class names; a label id is an index into this list (one sorted list for every split).
        verbs, nouns: verb and noun names where the format has them (None otherwise).
        action_verb, action_noun: the verb id and noun id of each action (None without verbs / nouns).
        subsets: named groups of actions that also get a separate top-1 (GTEA61: ``pair``, the classes that differ
            only by the direction of motion, such as take/put).
    """

    actions: list[str]
    verbs: list[str] | None = None
    nouns: list[str] | None = None
    action_verb: list[int] | None = None
    action_noun: list[int] | None = None
    subsets: dict[str, list[str]] = field(default_factory=dict)

    @property
    def has_verb_noun(self) -> bool:
        return self.action_verb is not None and self.action_noun is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        fields = {k: d.get(k) for k in ("actions", "verbs", "nouns", "action_verb", "action_noun")}
        return cls(**fields, subsets=dict(d.get("subsets") or {}))

    @classmethod
    def from_pairs(cls, actions: list[str], pairs: list[tuple[str, str]], **subsets: list[str]) -> Vocabulary:
        """Actions made of (verb, noun) pairs: verbs and nouns sorted, ids looked up per action."""
        verbs = sorted({v for v, _ in pairs})
        nouns = sorted({n for _, n in pairs})
        vi, ni = {v: i for i, v in enumerate(verbs)}, {n: i for i, n in enumerate(nouns)}
        return cls(list(actions), verbs, nouns, [vi[v] for v, _ in pairs], [ni[n] for _, n in pairs], dict(subsets))


@dataclass
class Manifest:
    root: str
    layout: str  # the reader (data.format) that read it
    classes: list[str]
    videos: list[VideoRecord]
    problems: list[Problem]
    vocab: Vocabulary | None = None

    def __post_init__(self) -> None:
        if self.vocab is None:
            self.vocab = Vocabulary(list(self.classes))

    # ----------------------------------------------------------------------------------------------------------
    def subjects(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.videos:
            out[v.subject] = out.get(v.subject, 0) + 1
        return dict(sorted(out.items()))

    def select(self, subjects: list[str], *, usable_only: bool = True, key: str = "the split keys") -> list[int]:
        """Indices of the videos of these subjects (``key`` names the config key for the error message)."""
        missing = [s for s in subjects if s not in self.subjects()]
        if missing:
            raise FparError(
                f"subject(s) {', '.join(missing)} not found under {self.root} (found: {', '.join(self.subjects())}); "
                f"set {key}"
            )
        return [i for i, v in enumerate(self.videos) if v.subject in subjects and (v.usable or not usable_only)]

    def verbs(self) -> list[str]:
        return list(self.vocab.verbs or [])

    def nouns(self) -> list[str]:
        return list(self.vocab.nouns or [])

    def fingerprint(self) -> str:
        """A hash of what a model sees: the classes and every video's files (names and counts, not contents)."""
        h = hashlib.sha256()
        h.update("\n".join(self.classes).encode())
        for v in self.videos:
            h.update(f"{v.key}|{len(v.rgb)}|{v.num_flows}|{len(v.mmaps)}|{v.usable}".encode())
            for p in v.rgb[:1] + v.rgb[-1:]:
                h.update(os.path.relpath(p, self.root).encode())
        return h.hexdigest()[:16]

    def to_json(self) -> dict:
        def rel(paths: list[str]) -> list[str]:
            return [os.path.relpath(p, self.root) for p in paths]

        return {
            "root": self.root,
            "layout": self.layout,
            "classes": self.classes,
            "vocabulary": self.vocab.to_dict(),
            "videos": [
                {
                    **asdict(v),
                    "rgb": rel(v.rgb),
                    "flow_x": rel(v.flow_x),
                    "flow_y": rel(v.flow_y),
                    "mmaps": rel(v.mmaps),
                }
                for v in self.videos
            ],
            "problems": [asdict(p) for p in self.problems],
        }

    def save(self, path: str | Path) -> None:
        from ..utils import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json()))
