"""Miniature EGTEA Gaze+ and EPIC-KITCHENS-100 datasets in their native on-disk formats, built at test time.

The readers for these datasets have to cope with the files exactly as the publishers ship them (see
``shared/reference/datasets.md``, sections 1 and 2), so these builders reproduce the formats, not just the ideas:

* EGTEA Gaze+: ``action_annotation/{action,verb,noun}_idx.txt`` (``<name> <id>``, names with spaces, ``/`` and
  ``,``, ids 1-based), ``train_split{1,2,3}.txt`` / ``test_split{1,2,3}.txt`` (1-3 nouns per line, no header) and
  real MP4 clips in ``cropped_clips/<session>/<clip>.mp4``; one listed clip is missing, one clip is 15 frames long,
  one noun id is never a first noun, one ``Pour`` clip names ``bowl`` where the action name says ``salad``.
* EPIC-KITCHENS-100: the 15-column train/validation CSVs written through :mod:`csv` (so the quoting of list
  literals and of narrations with commas is genuine), class files, tail and unseen-participant files, the 8-column
  test timestamps, RGB JPEGs ``frame_%010d.jpg`` from 1 as folders and as uncompressed tars (members with and
  without a leading ``./``), TV-L1-style ``u``/``v`` flow JPEGs at stride 2 (EK-55, ``N // 2`` frames) or stride 1
  (extension, ``N - 1`` frames), one video without any flow and one segment that runs past the last frame.

Every builder returns a dict of *facts*: the values the builder itself decided (or, for the MP4 frame counts,
measured by decoding the files back), so a test can compare a reader's output against them without re-deriving
anything from the files. Images are tiny and every random choice comes from a fixed seed, so building both datasets
takes well under a second and two builds are byte-identical.

Every image carries its 1-based frame number in two 16x16 grey cells in the top-left corner (low and high nibble);
:func:`frame_index` reads it back, so a test can check *which* frame a reader returned, not just how many.
"""

from __future__ import annotations

import csv
import io
import math
import tarfile
from pathlib import Path

import av
import cv2
import numpy as np

# --------------------------------------------------------------------------------------------------------------
# Frame painting shared by both datasets

CELL = 16  # stamp cells are 16x16 and 16-aligned: one JPEG/H.264 macroblock each, so the grey level survives coding


def _stamp(img: np.ndarray, index: int) -> None:
    """Write ``index`` (0..255) into the top-left cells of ``img`` (HxW or HxWx3), in place."""
    for cell, nibble in enumerate((index & 15, (index >> 4) & 15)):
        # Centre of each 16-level bin, so lossy coding may move the grey by up to +-7 and still decode.
        img[:CELL, cell * CELL : (cell + 1) * CELL] = nibble * 16 + 8


def frame_index(image: np.ndarray) -> int:
    """The frame number stamped by the builders into ``image`` (RGB, BGR or grey; modulo 256)."""
    grey = image if image.ndim == 2 else image.mean(axis=2)
    nibbles = [
        int(np.clip(round((float(grey[4:12, c * CELL + 4 : c * CELL + 12].mean()) - 8) / 16), 0, 15)) for c in range(2)
    ]
    return nibbles[0] | (nibbles[1] << 4)


def _rgb_frame(size: tuple[int, int], colour: tuple[int, int, int], t: int, index: int) -> np.ndarray:
    """A solid ``colour`` frame (HxWx3 RGB uint8) with a white square that moves with ``t``, stamped ``index``."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = colour
    side = max(6, h // 6)
    # The square lives below the stamp row so it never corrupts the frame number; it bounces left-right.
    span = w - side
    x = (3 * t) % (2 * span)
    x = x if x < span else 2 * span - x
    y = CELL + 2 + (t % max(1, h - CELL - 2 - side))
    img[y : y + side, x : x + side] = 255
    _stamp(img, index)
    return img


def _flow_frame(size: tuple[int, int], t: int, index: int, component: int) -> np.ndarray:
    """A grey flow image (HxW uint8): 128 (= no motion) with a bar of motion that moves with ``t``, stamped."""
    w, h = size
    img = np.full((h, w), 128, np.uint8)
    x = (2 * t) % max(1, w - 8)
    # u and v get opposite signs so a reader that swaps them is visible.
    img[CELL + 2 :, x : x + 8] = 170 if component == 0 else 86
    _stamp(img, index)
    return img


def _jpeg(img: np.ndarray) -> bytes:
    """Real JPEG bytes; colour images are given RGB and stored like any JPEG (decoders return BGR or RGB)."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def _tar(path: Path, members: list[tuple[str, bytes | None]]) -> None:
    """An uncompressed tar of ``(name, data)`` members; ``data=None`` adds a directory entry, as GNU tar does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0  # fixed, so builds are byte-identical
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))


# --------------------------------------------------------------------------------------------------------------
# EGTEA Gaze+

EGTEA_FPS = 24
EGTEA_SIZE = (80, 60)  # (w, h); even, as yuv420p needs
EGTEA_SESSIONS = ("OP01-R01-PastaSalad", "P21-R04-ContinentalBreakfast", "P02-R06-GreekSalad")
EGTEA_VERBS = ("Inspect/Read", "Move Around", "Take", "Put", "Pour")
# ``salad`` (id 4) is only ever a second or third noun, like the two real noun ids that are never first.
EGTEA_NOUNS = ("recipe", "eating_utensil", "seasoning_container", "salad", "bowl", "cup", "seasoning")
# action name, verb id, noun ids (all 1-based); the first noun is the one fixed to the action.
EGTEA_ACTIONS: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("Inspect/Read recipe", 1, (1,)),
    ("Move Around eating_utensil", 2, (2,)),
    ("Take cup", 3, (6,)),
    ("Put cup", 4, (6,)),
    ("Take bowl", 3, (5,)),
    ("Pour seasoning,seasoning_container,salad", 5, (7, 3, 4)),
    ("Take seasoning_container", 3, (3,)),
    ("Put eating_utensil,bowl", 4, (2, 5)),
)
EGTEA_CLIPS = 24
EGTEA_MISSING = 1  # clip index; 1 % 4 == 1: train in splits 1 and 3, test in split 2
EGTEA_SHORTEST = 5  # clip index that gets exactly 15 frames (the real shortest clip length)
EGTEA_COLOURS = (
    (200, 60, 60),
    (60, 200, 60),
    (60, 60, 200),
    (200, 200, 60),
    (200, 60, 200),
    (60, 200, 200),
    (230, 140, 40),
    (120, 80, 160),
)


def _video_codec() -> str:
    # libx264 is what people would use, but some PyAV wheels ship without it; mpeg4 is always built in.
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    h, w = frames[0].shape[:2]
    codec = _video_codec()
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            # Near-lossless so the frame stamp survives; ultrafast has no B-frames, so no reordering surprises.
            stream.options = {"crf": "10", "preset": "ultrafast"}
        else:
            stream.bit_rate = 4_000_000
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            out.mux(packet)


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as inp:
        return sum(1 for _ in inp.decode(video=0))


def make_egtea(root: Path, *, with_raw: bool = False) -> dict:
    """Write a miniature EGTEA Gaze+ under ``root`` (``action_annotation/`` and ``cropped_clips/``).

    24 clips from 3 sessions (3 participants), 8 actions, 5 verbs, 7 nouns; each split ``k`` puts clip ``i`` in test
    when ``i % 4 == k - 1`` (6 test, 18 train lines). Clips are 24 fps, 80x60, 16-30 frames, one exactly 15; frame
    ``j`` (1-based) of a clip carries ``frame_index == j`` and a colour fixed by the action. ``with_raw`` also writes
    ``action_annotation/raw_annotations/cls_label_index.csv`` (``;``-separated, 0-based).

    Facts returned:

    * ``clips``: all clip names in split-file line order (including the missing one);
    * ``missing_clip``: the clip listed in ``train_split1.txt`` (and ``test_split2.txt``) that has no MP4;
    * ``frames``: clip -> number of frames decoded back from its MP4 (present clips only);
    * ``split_counts``: ``{1: {"train": n, "test": n}, 2: ..., 3: ...}``, lines per file, the missing clip included;
    * ``actions`` / ``verbs`` / ``nouns``: names in id order (index = id - 1);
    * ``labels``: clip -> ``(action, verb, [nouns...])``, all 0-based;
    * ``multi_noun_clips``: clips whose line has 2 or 3 nouns;
    * ``unused_first_noun``: the 0-based noun id no line uses as first noun;
    * ``shortest_clip``: the 15-frame clip; ``fps``: 24; ``size``: ``(w, h)``; ``codec``: the encoder used;
    * ``colours``: action (0-based) -> the RGB background of its clips.
    """
    root = Path(root)
    rng = np.random.default_rng(1234)
    ann = root / "action_annotation"
    ann.mkdir(parents=True, exist_ok=True)

    # Index files: ``<name> <id>``, LF; readers must split on the last space.
    def write_index(name: str, names: list[str]) -> None:
        (ann / name).write_text("".join(f"{n} {i}\n" for i, n in enumerate(names, 1)), newline="\n")

    actions = [a[0] for a in EGTEA_ACTIONS]
    write_index("action_idx.txt", actions)
    write_index("verb_idx.txt", list(EGTEA_VERBS))
    write_index("noun_idx.txt", list(EGTEA_NOUNS))

    clips: list[str] = []
    lines: list[str] = []
    labels: dict[str, tuple[int, int, list[int]]] = {}
    lengths: dict[str, int] = {}
    sessions: dict[str, str] = {}
    clock = {s: int(rng.integers(20_000, 400_000)) for s in EGTEA_SESSIONS}  # ms into each raw session video
    pour_seen = 0
    for i in range(EGTEA_CLIPS):
        session = EGTEA_SESSIONS[i % len(EGTEA_SESSIONS)]
        action = i % len(EGTEA_ACTIONS) + 1
        _, verb, nouns = EGTEA_ACTIONS[action - 1]
        if nouns == (7, 3, 4):
            # The real quirk: one Pour-...-salad line lists bowl (5) as third noun instead of salad.
            nouns = (7, 3, 5) if pour_seen == 0 else nouns
            pour_seen += 1
        n = 15 if i == EGTEA_SHORTEST else int(rng.integers(16, 31))
        start_ms = clock[session] + int(rng.integers(2_000, 20_000))
        end_ms = start_ms + round(n * 1000 / EGTEA_FPS) + int(rng.integers(-150, 150))
        clock[session] = end_ms
        # F numbers are raw-video frames at 24 fps; the real ones sit a few frames off ms * 24 / 1000.
        f_start = max(0, start_ms * EGTEA_FPS // 1000 + int(rng.integers(-7, 3)))
        clip = f"{session}-{start_ms}-{end_ms}-F{f_start:06d}-F{f_start + n - 1:06d}"
        clips.append(clip)
        sessions[clip] = session
        lengths[clip] = n
        labels[clip] = (action - 1, verb - 1, [x - 1 for x in nouns])
        lines.append(" ".join(map(str, (clip, action, verb, *nouns))) + "\n")

    split_counts: dict[int, dict[str, int]] = {}
    for k in (1, 2, 3):
        test = [ln for i, ln in enumerate(lines) if i % 4 == k - 1]
        train = [ln for i, ln in enumerate(lines) if i % 4 != k - 1]
        (ann / f"train_split{k}.txt").write_text("".join(train), newline="\n")
        (ann / f"test_split{k}.txt").write_text("".join(test), newline="\n")
        split_counts[k] = {"train": len(train), "test": len(test)}

    if with_raw:
        raw = ann / "raw_annotations"
        raw.mkdir(exist_ok=True)
        # The real file's odd spacing (a space before each ';' after the action label) is kept on purpose.
        rows = ["# Action ID; Action Label; Verb Label; Noun Label(s)\n"]
        for a, (name, verb, nouns) in enumerate(EGTEA_ACTIONS):
            noun_labels = ",".join(EGTEA_NOUNS[x - 1] for x in nouns)
            rows.append(f"{a}; {name} ; {EGTEA_VERBS[verb - 1]}; {noun_labels}\n")
        (raw / "cls_label_index.csv").write_text("".join(rows), newline="\n")

    missing = clips[EGTEA_MISSING]
    frames: dict[str, int] = {}
    for clip in clips:
        if clip == missing:
            continue
        action0 = labels[clip][0]
        n = lengths[clip]
        imgs = [_rgb_frame(EGTEA_SIZE, EGTEA_COLOURS[action0], t + 3 * action0, t + 1) for t in range(n)]
        path = root / "cropped_clips" / sessions[clip] / f"{clip}.mp4"
        _write_mp4(path, imgs, EGTEA_FPS)
        frames[clip] = _decoded_frames(path)  # what a decoder really yields, not what we meant to write

    first_nouns = {lab[2][0] for lab in labels.values()}
    return {
        "clips": clips,
        "missing_clip": missing,
        "frames": frames,
        "split_counts": split_counts,
        "actions": actions,
        "verbs": list(EGTEA_VERBS),
        "nouns": list(EGTEA_NOUNS),
        "labels": labels,
        "multi_noun_clips": [c for c in clips if len(labels[c][2]) > 1],
        "unused_first_noun": next(i for i in range(len(EGTEA_NOUNS)) if i not in first_nouns),
        "shortest_clip": clips[EGTEA_SHORTEST],
        "fps": EGTEA_FPS,
        "size": EGTEA_SIZE,
        "codec": _video_codec(),
        "colours": {a: EGTEA_COLOURS[a] for a in range(len(EGTEA_ACTIONS))},
    }


# --------------------------------------------------------------------------------------------------------------
# EPIC-KITCHENS-100

EPIC_SIZE = (64, 36)  # (w, h); the real frames are 456x256, the same 16:9
EPIC_HEADER = (
    "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
    "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes"
).split(",")
EPIC_VERBS: tuple[tuple[str, list[str], str], ...] = (
    ("take", ["collect-from", "take", "pick-up"], "retrieve"),
    ("put-down", ["put-down", "put", "place"], "leave"),
    ("open", ["open", "unscrew"], "access"),
    ("close", ["close", "shut"], "block"),
    ("wash", ["wash", "rinse", "clean"], "clean"),
    ("cut", ["cut", "slice", "chop"], "divide"),
    ("turn-on", ["turn-on", "switch-on"], "turn"),
    ("pour", ["pour", "pour-into"], "pour"),
)
EPIC_NOUNS: tuple[tuple[str, list[str], str], ...] = (
    ("tap", ["tap", "tap:water"], "appliances"),
    ("spoon", ["spoon", "teaspoon"], "cutlery"),
    ("plate", ["plate", "plate:dinner"], "crockery"),
    ("cupboard", ["cupboard"], "furniture"),
    ("knife", ["knife", "knife:butter"], "cutlery"),
    ("pan", ["pan", "frying-pan"], "cookware"),
    ("lid", ["lid", "cover"], "cookware"),
    ("bowl", ["bowl"], "crockery"),
    ("pan:dust", ["pan:dust", "dustpan"], "cleaning equipment"),
    ("water", ["water"], "drink"),
)
EPIC_TAIL_VERBS = (6, 7)  # turn-on, pour
EPIC_TAIL_NOUNS = (8, 9)  # pan:dust, water
EPIC_UNSEEN = ("P03",)

# video -> frames N, split, RGB and flow storage ("dir" | "tar" | None), tar member prefixes ("./" or bare),
# number of segments.
# Validation is all EK-55 and test all extension, as in the real release; P03 is only in validation (unseen).
EPIC_VIDEOS: dict[str, dict] = {
    "P01_01": {
        "frames": 180,
        "split": "train",
        "rgb": "tar",
        "flow": "tar",
        "rgb_prefix": "./",
        "flow_prefix": "",
        "segments": 9,
    },
    "P02_102": {"frames": 150, "split": "train", "rgb": "dir", "flow": "dir", "segments": 8},
    "P02_03": {"frames": 160, "split": "validation", "rgb": "tar", "flow": None, "rgb_prefix": "", "segments": 7},
    "P03_04": {"frames": 140, "split": "validation", "rgb": "dir", "flow": "dir", "segments": 6},
    "P01_101": {"frames": 120, "split": "test", "rgb": "dir", "flow": "tar", "flow_prefix": "./", "segments": 4},
}
EPIC_OVERRUN = ("P01_01", 8)  # this segment stops 7 frames past the last RGB frame
EPIC_ENDS_AT_LAST = ("P02_102", 7)  # this one stops exactly on frame N (flow N clips to N - 1)
EPIC_EMPTY_TS = ("P03_04", 2)  # empty narration_timestamp, as on 70 real validation rows
EPIC_COMMA = ("P01_01", 3)  # narration with a comma and two nouns: quoted fields


def _is_extension(video: str) -> bool:
    """``PXX_1YY`` (three-digit index) videos are the EPIC-100 extension; ``PXX_YY`` are EPIC-55."""
    return len(video.split("_")[1]) == 3


def _hms(centis: int, digits: int) -> str:
    """``HH:MM:SS.ff`` (digits=2) or ``HH:MM:SS.fff`` (digits=3) from a time in 1/100 or 1/1000 seconds."""
    unit = 10**digits
    s, frac = divmod(centis, unit)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{frac:0{digits}d}"


def _time_for_frame(frame: int, fps: int) -> int:
    """The earliest time in 1/100 s whose ``floor(t * fps)`` is ``frame`` (a 1/100 s step is under one frame)."""
    centis = math.ceil(frame * 100 / fps)
    assert centis * fps // 100 == frame
    return centis


def _flow_range(start: int, stop: int, stride: int, flows: int) -> tuple[int, int] | None:
    """RGB ``start..stop`` (1-based files) to flow file numbers, ``(rgb - 1) // stride + 1``, clipped to 1..flows."""
    if flows == 0:
        return None
    first, last = (start - 1) // stride + 1, (stop - 1) // stride + 1
    return min(max(first, 1), flows), min(max(last, 1), flows)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    # csv.writer quotes exactly the fields that need it (list literals with commas, narrations with commas); LF
    # line ends like the published files.
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def make_epic100(root: Path, annotations: Path | None = None) -> dict:
    """Write a miniature EPIC-KITCHENS-100: frames under ``root/<P>/``, CSVs in ``annotations`` (default ``root``).

    Five videos, 64x36 JPEGs: P01_01 (EK-55, train; RGB tar with ``./frame_*`` members, flow tar with ``u/``, ``v/``
    members), P02_102 (extension, train; RGB and flow folders), P02_03 (EK-55, validation; RGB tar with bare
    ``frame_*`` members, **no flow**), P03_04 (EK-55, validation only, unseen participant P03; folders) and P01_101
    (extension, test only; RGB folder, flow tar with ``./u/``, ``./v/`` members). 17 train and 13 validation
    segments of 10-40 frames, 4 test segments. RGB file ``j`` carries ``frame_index == j``; flow file ``k`` carries
    ``frame_index == k``. Tars contain directory entries (``./``, ``u/``, ``v/``) as GNU tar writes them.

    Files written in ``annotations``: ``EPIC_100_{train,validation}.csv`` (15 columns),
    ``EPIC_100_test_timestamps.csv`` (8 columns), ``EPIC_100_{verb,noun}_classes.csv`` (``id,key,instances,
    category``), ``EPIC_100_tail_{verbs,nouns}.csv`` (the published format: one column headed ``verb`` / ``noun``
    holding class ids), ``EPIC_100_unseen_participant_ids_validation.csv`` (``participant_id``) and
    ``EPIC_100_video_info.csv`` (native fps, 59.94 for EK-55: a trap for readers that map time with it).

    Facts returned:

    * ``videos``: video -> ``{"frames": N, "flows": n or 0, "fps": 60|50, "rgb": "tar"|"dir",
      "flow": "tar"|"dir"|None, "stride": 2|1, "participant": "P01", "split": "train"|"validation"|"test"}``;
    * ``segments``: ``{"train": [...], "validation": [...]}``, each a dict with ``narration_id, video, participant,
      start_frame, stop_frame, verb_class, noun_class, all_noun_classes, narration``;
    * ``test_segments``: the test rows (same keys, labels ``None``); ``test_ids``: their narration ids;
    * ``overrun``: the segment whose ``stop_frame`` is past its video's last frame; ``ends_at_last``: the one that
      stops exactly on frame N; ``empty_narration_timestamp``; ``comma_narration`` (narration ids);
    * ``verbs`` / ``nouns``: class keys in id order; ``unseen``: validation-only participants;
    * ``tail_verbs`` / ``tail_nouns``: class ids;
    * ``flow_range``: narration id (every split) -> ``(first, last)`` flow file numbers, or ``None`` without flow.
    """
    root = Path(root)
    annotations = Path(annotations) if annotations is not None else root
    annotations.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(100)

    _write_csv(
        annotations / "EPIC_100_verb_classes.csv",
        ["id", "key", "instances", "category"],
        [[i, k, str(inst), cat] for i, (k, inst, cat) in enumerate(EPIC_VERBS)],
    )
    _write_csv(
        annotations / "EPIC_100_noun_classes.csv",
        ["id", "key", "instances", "category"],
        [[i, k, str(inst), cat] for i, (k, inst, cat) in enumerate(EPIC_NOUNS)],
    )
    _write_csv(annotations / "EPIC_100_tail_verbs.csv", ["verb"], [[v] for v in EPIC_TAIL_VERBS])
    _write_csv(annotations / "EPIC_100_tail_nouns.csv", ["noun"], [[n] for n in EPIC_TAIL_NOUNS])
    _write_csv(
        annotations / "EPIC_100_unseen_participant_ids_validation.csv", ["participant_id"], [[p] for p in EPIC_UNSEEN]
    )

    videos: dict[str, dict] = {}
    segments: dict[str, list[dict]] = {"train": [], "validation": []}
    test_segments: list[dict] = []
    rows: dict[str, list[list]] = {"train": [], "validation": [], "test": []}
    flow_range: dict[str, tuple[int, int] | None] = {}
    special: dict[str, str] = {}
    video_info: list[list] = []

    for vi, (video, spec) in enumerate(EPIC_VIDEOS.items()):
        participant = video.split("_")[0]
        ext = _is_extension(video)
        fps, stride = (50, 1) if ext else (60, 2)
        n = spec["frames"]
        flows = 0 if spec["flow"] is None else (n - 1 if ext else n // 2)
        videos[video] = {
            "frames": n,
            "flows": flows,
            "fps": fps,
            "rgb": spec["rgb"],
            "flow": spec["flow"],
            "stride": stride,
            "participant": participant,
            "split": spec["split"],
        }
        video_info.append([video, f"{n / fps:.3f}", 50.0 if ext else 59.94, "1920x1080"])

        # ---- frames
        colour = tuple(int(c) for c in rng.integers(40, 216, 3))
        rgb = [_jpeg(_rgb_frame(EPIC_SIZE, colour, j, j)) for j in range(1, n + 1)]
        base = root / participant / "rgb_frames"
        if spec["rgb"] == "dir":
            (base / video).mkdir(parents=True, exist_ok=True)
            for j, data in enumerate(rgb, 1):
                (base / video / f"frame_{j:010d}.jpg").write_bytes(data)
        else:
            prefix = spec["rgb_prefix"]
            members: list[tuple[str, bytes | None]] = [("./", None)] if prefix == "./" else []
            members += [(f"{prefix}frame_{j:010d}.jpg", data) for j, data in enumerate(rgb, 1)]
            _tar(base / f"{video}.tar", members)
        if flows:
            uv = {
                c: [_jpeg(_flow_frame(EPIC_SIZE, k * stride, k, ci)) for k in range(1, flows + 1)]
                for ci, c in enumerate("uv")
            }
            base = root / participant / "flow_frames"
            if spec["flow"] == "dir":
                for c, datas in uv.items():
                    (base / video / c).mkdir(parents=True, exist_ok=True)
                    for k, data in enumerate(datas, 1):
                        (base / video / c / f"frame_{k:010d}.jpg").write_bytes(data)
            else:
                prefix = spec["flow_prefix"]
                members = [("./", None)] if prefix == "./" else []
                for c, datas in uv.items():
                    members.append((f"{prefix}{c}/", None))
                    members += [(f"{prefix}{c}/frame_{k:010d}.jpg", data) for k, data in enumerate(datas, 1)]
                _tar(base / f"{video}.tar", members)

        # ---- segments
        for s in range(spec["segments"]):
            length = int(rng.integers(10, 41))
            if s == 0:
                start = 1  # starts at t = 0: floor(0) = 0, published as frame 1
            else:
                start = int(rng.integers(2, n - length + 2))
            stop = start + length - 1
            if (video, s) == EPIC_OVERRUN:
                stop = n + 7
                start = stop - length + 1
            if (video, s) == EPIC_ENDS_AT_LAST:
                stop = n
                start = stop - length + 1
            t0 = 0 if start == 1 else _time_for_frame(start, fps)
            t1 = _time_for_frame(stop, fps)
            assert max(1, t0 * fps // 100) == start and t1 * fps // 100 == stop
            narration_ms = t0 * 10 + int(rng.integers(0, 400))
            nid = f"{video}_{s}"
            flow_range[nid] = _flow_range(start, stop, stride, flows)
            narration_ts = "" if (video, s) == EPIC_EMPTY_TS else _hms(narration_ms, 3)
            head = [nid, participant, video, narration_ts, _hms(t0, 2), _hms(t1, 2), start, stop]
            if spec["split"] == "test":
                rows["test"].append(head)
                test_segments.append(
                    {
                        "narration_id": nid,
                        "video": video,
                        "participant": participant,
                        "start_frame": start,
                        "stop_frame": stop,
                        "verb_class": None,
                        "noun_class": None,
                        "all_noun_classes": None,
                        "narration": None,
                    }
                )
                continue
            # Labels cycle through every class (so the tail classes occur), offset per video.
            verb = (s + 3 * vi) % len(EPIC_VERBS)
            noun = (2 * s + vi) % len(EPIC_NOUNS)
            nouns = [noun]
            if (video, s) == EPIC_COMMA or s == 5:
                nouns.append((noun + 2) % len(EPIC_NOUNS))  # a second noun: list literals with a comma
            # Narrations say nouns the natural way round: the class key ``pan:dust`` is narrated "dust pan".
            words = [" ".join(reversed(EPIC_NOUNS[x][0].split(":"))) for x in nouns]
            narration = f"{EPIC_VERBS[verb][0].replace('-', ' ')} {words[0]}"
            if len(words) > 1:
                narration += f", {words[1]}" if (video, s) == EPIC_COMMA else f" and {words[1]}"
            all_nouns = [EPIC_NOUNS[x][0] for x in nouns]
            rows[spec["split"]].append(
                head + [narration, EPIC_VERBS[verb][0], verb, EPIC_NOUNS[noun][0], noun, str(all_nouns), str(nouns)]
            )
            segments[spec["split"]].append(
                {
                    "narration_id": nid,
                    "video": video,
                    "participant": participant,
                    "start_frame": start,
                    "stop_frame": stop,
                    "verb_class": verb,
                    "noun_class": noun,
                    "all_noun_classes": nouns,
                    "narration": narration,
                }
            )
            if (video, s) == EPIC_OVERRUN:
                special["overrun"] = nid
            if (video, s) == EPIC_ENDS_AT_LAST:
                special["ends_at_last"] = nid
            if (video, s) == EPIC_EMPTY_TS:
                special["empty_narration_timestamp"] = nid
            if (video, s) == EPIC_COMMA:
                special["comma_narration"] = nid

    _write_csv(annotations / "EPIC_100_train.csv", EPIC_HEADER, rows["train"])
    _write_csv(annotations / "EPIC_100_validation.csv", EPIC_HEADER, rows["validation"])
    _write_csv(annotations / "EPIC_100_test_timestamps.csv", EPIC_HEADER[:8], rows["test"])
    _write_csv(annotations / "EPIC_100_video_info.csv", ["video_id", "duration", "fps", "resolution"], video_info)

    return {
        "videos": videos,
        "segments": segments,
        "test_segments": test_segments,
        "test_ids": [s["narration_id"] for s in test_segments],
        "overrun": special["overrun"],
        "ends_at_last": special["ends_at_last"],
        "empty_narration_timestamp": special["empty_narration_timestamp"],
        "comma_narration": special["comma_narration"],
        "verbs": [v[0] for v in EPIC_VERBS],
        "nouns": [n[0] for n in EPIC_NOUNS],
        "unseen": list(EPIC_UNSEEN),
        "tail_verbs": list(EPIC_TAIL_VERBS),
        "tail_nouns": list(EPIC_TAIL_NOUNS),
        "flow_range": flow_range,
    }


if __name__ == "__main__":
    import tempfile
    import time

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        eg = make_egtea(Path(tmp) / "egtea", with_raw=True)
        t_eg = time.perf_counter() - t
        t = time.perf_counter()
        ep = make_epic100(Path(tmp) / "epic", Path(tmp) / "epic" / "annotations")
        t_ep = time.perf_counter() - t
        print(
            f"EGTEA ({t_eg:.2f}s, {eg['codec']}): {len(eg['clips'])} clips, {len(eg['frames'])} encoded "
            f"({min(eg['frames'].values())}-{max(eg['frames'].values())} frames), splits {eg['split_counts']}, "
            f"{len(eg['actions'])} actions / {len(eg['verbs'])} verbs / {len(eg['nouns'])} nouns, "
            f"{len(eg['multi_noun_clips'])} multi-noun, missing {eg['missing_clip']}"
        )
        print(
            f"EPIC-100 ({t_ep:.2f}s): {len(ep['videos'])} videos, {len(ep['segments']['train'])} train / "
            f"{len(ep['segments']['validation'])} validation / {len(ep['test_ids'])} test segments, "
            f"{len(ep['verbs'])} verbs / {len(ep['nouns'])} nouns, overrun {ep['overrun']}, unseen {ep['unseen']}"
        )
