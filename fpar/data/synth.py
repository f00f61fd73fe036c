"""A synthetic egocentric dataset in the exact GTEA61 course layout (`fpar data synth`).

What makes it a useful stand-in for GTEA61 (and what the report's questions need):

* classes are ``verb_noun[,noun]`` like GTEA61, and a good share of them come in **motion-only pairs**:
  ``put_X`` is exactly ``take_X`` played backwards and ``close_X`` is ``open_X`` backwards, so the set of frames is
  the same and only the order (or the flow) tells them apart;
* nouns differ by appearance (colour, shape, label band); some share a shape and differ only in colour
  (jam / honey jars), which a flow-only model cannot tell apart, so the two streams are complementary;
* hands (skin-coloured palm and arm from the bottom edge) do the actions;
* four subjects differ in table colour and texture, lighting (gain, tint, gradient), skin tone and camera shake,
  so testing on S2 is a real domain shift;
* the camera moves (smooth head motion plus shake); the stored **warp flow** has the camera motion removed and
  shows only hand and object motion, encoded like GTEA61 / dense_flow (8-bit grey, bound 20 px, 128 = still),
  slightly blurred and noisy like a TV-L1 estimate;
* **binary motion maps** mark what moves (IDT-like: dilated masks of the moving parts);
* lengths vary, and a few of GTEA61's quirks are reproduced: some first motion maps are missing, a ``.DS_Store``
  sits at several levels, one flow has a ``(1)`` duplicate, and some videos have N flows instead of N-1.

Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import FparError
from .flowcodec import encode_flow
from .layout import motion_pairs  # noqa: F401  (the pairs the generator makes; re-exported)

SUBJECTS = ("S1", "S2", "S3", "S4")

# --------------------------------------------------------------------------------------------------------------
# Appearance


def _ellipse(rx: float, ry: float, n: int = 28) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([rx * np.cos(a), ry * np.sin(a)], 1)


def _rect(w: float, h: float) -> np.ndarray:
    return np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])


def _bottle(w: float, h: float) -> np.ndarray:
    return np.array(
        [
            [-w / 2, h / 2],
            [-w / 2, -h / 6],
            [-w / 5, -h / 3],
            [-w / 5, -h / 2],
            [w / 5, -h / 2],
            [w / 5, -h / 3],
            [w / 2, -h / 6],
            [w / 2, h / 2],
        ]
    )


def _triangle(w: float, h: float) -> np.ndarray:
    return np.array([[-w / 2, h / 2], [w / 2, h / 2], [0.0, -h / 2]])


@dataclass(frozen=True)
class Noun:
    shape: str  # jar | bottle | box | flat | round | wedge | long | tool
    color: tuple[int, int, int]
    band: tuple[int, int, int]
    lid: tuple[int, int, int] | None = None


NOUNS: dict[str, Noun] = {
    "cup": Noun("round", (235, 235, 240), (40, 90, 200)),
    "cheese": Noun("wedge", (245, 200, 40), (220, 160, 20)),
    "bread": Noun("flat", (200, 150, 90), (160, 110, 60)),
    "jam": Noun("jar", (190, 20, 40), (250, 250, 250), lid=(200, 170, 40)),
    "honey": Noun("jar", (235, 150, 20), (250, 250, 250), lid=(200, 170, 40)),
    "coffee": Noun("jar", (80, 45, 25), (230, 40, 40), lid=(40, 40, 40)),
    "peanut": Noun("jar", (170, 110, 60), (60, 130, 60), lid=(30, 80, 170)),
    "water": Noun("bottle", (120, 190, 240), (30, 60, 160), lid=(30, 60, 160)),
    "mustard": Noun("bottle", (240, 210, 30), (200, 40, 30), lid=(200, 40, 30)),
    "ketchup": Noun("bottle", (200, 20, 20), (250, 250, 250), lid=(250, 250, 250)),
    "mayonnaise": Noun("bottle", (245, 245, 225), (40, 140, 60), lid=(40, 140, 60)),
    "tea": Noun("box", (40, 150, 70), (240, 220, 120), lid=(30, 110, 50)),
    "sugar": Noun("box", (240, 240, 240), (40, 40, 200), lid=(200, 200, 210)),
    "chocolate": Noun("box", (110, 60, 30), (210, 210, 220), lid=(150, 90, 50)),
    "hotdog": Noun("long", (220, 120, 110), (170, 70, 50)),
    "spoon": Noun("tool", (180, 180, 190), (150, 150, 160)),
    "knife": Noun("tool", (150, 150, 155), (60, 50, 40)),
}


def _body_poly(noun: Noun, size: float) -> np.ndarray:
    s = size
    return {
        "jar": lambda: _rect(0.8 * s, 0.9 * s),
        "bottle": lambda: _bottle(0.55 * s, 1.3 * s),
        "box": lambda: _rect(1.1 * s, 0.75 * s),
        "flat": lambda: _rect(1.3 * s, 0.5 * s),
        "round": lambda: _ellipse(0.5 * s, 0.45 * s),
        "wedge": lambda: _triangle(1.1 * s, 0.8 * s),
        "long": lambda: _ellipse(0.8 * s, 0.22 * s),
        "tool": lambda: _rect(0.14 * s, 1.1 * s),
    }[noun.shape]()


def _lid_poly(noun: Noun, size: float) -> np.ndarray:
    return {"jar": _rect(0.86 * size, 0.22 * size), "bottle": _rect(0.3 * size, 0.2 * size)}.get(
        noun.shape, _rect(1.14 * size, 0.2 * size)
    )


def _lid_offset(noun: Noun, size: float) -> np.ndarray:
    return {"jar": np.array([0, -0.56 * size]), "bottle": np.array([0, -0.75 * size])}.get(
        noun.shape, np.array([0, -0.47 * size])
    )


# --------------------------------------------------------------------------------------------------------------
# Motion programs: verb -> parts (name, polygon in part coords, colour, centre, angle, scale) over time s in [0, 1]


@dataclass
class Part:
    poly: np.ndarray  # (K, 2) local coordinates
    color: tuple[int, int, int]
    center: np.ndarray  # world (canvas) coordinates
    angle: float = 0.0
    scale: float = 1.0
    moving: bool = True
    band: tuple[int, int, int] | None = None  # a label band across the middle (appearance detail)

    def world(self) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        rot = np.array([[c, -s], [s, c]])
        return self.center + self.scale * self.poly @ rot.T


def _smooth(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def _seg(s: float, a: float, b: float) -> float:
    return _smooth((s - a) / (b - a))


def _hand_parts(tip: np.ndarray, skin: tuple[int, int, int], size: float, base_x: float, bottom: float) -> list[Part]:
    palm = Part(_ellipse(0.38 * size, 0.3 * size), skin, tip.copy())
    # the arm: a long rectangle from the palm to the bottom edge
    base = np.array([base_x, bottom + 0.6 * size])
    d = base - tip
    length = float(np.hypot(*d))
    ang = math.atan2(d[1], d[0]) - math.pi / 2
    arm = Part(_rect(0.42 * size, length), tuple(int(c * 0.92) for c in skin), (tip + base) / 2, angle=ang)
    return [arm, palm]


def scene_parts(verb: str, nouns: list[Noun], s: float, ctx: dict) -> list[Part]:
    """All parts of the scene at time ``s``; ``ctx`` holds the per-video layout (positions, sizes, skin...)."""
    size, anchor, skin = ctx["size"], ctx["anchor"], ctx["skin"]
    rest = ctx["rest"]  # where the hand waits, near the bottom edge
    hand_tip = rest.copy()
    parts: list[Part] = []
    main = nouns[0]
    body_c = anchor.copy()
    scale = 1.0
    angle = 0.0
    if verb in ("take", "put"):
        s2 = s if verb == "take" else 1.0 - s  # put is take played backwards
        reach = _seg(s2, 0.05, 0.4)
        lift = _seg(s2, 0.45, 0.95)
        target = np.array([ctx["w"] * 0.5 + ctx["world_x0"], ctx["bottom"] - 0.35 * size])
        body_c = anchor + lift * (target - anchor)
        scale = 1.0 + 0.35 * lift  # closer to the camera
        grip = anchor + np.array([0.0, 0.25 * size])
        hand_tip = rest + reach * (grip - rest) if lift == 0 else body_c + np.array([0.0, 0.25 * size * scale])
    elif verb in ("open", "close"):
        s2 = s if verb == "open" else 1.0 - s  # close is open played backwards
        reach = _seg(s2, 0.05, 0.35)
        move = _seg(s2, 0.4, 0.9)
        lid0 = anchor + _lid_offset(main, size)
        lid_c = lid0 + move * np.array([ctx["side"] * 1.3 * size, -0.25 * size])
        lid_angle = move * ctx["side"] * 0.6
        hand_tip = rest + reach * (lid0 - rest) if move == 0 else lid_c.copy()
        parts.append(Part(_body_poly(main, size), main.color, body_c, band=main.band, moving=False))
        parts.append(Part(_lid_poly(main, size), main.lid or main.band, lid_c, angle=lid_angle))
        return parts + _hand_parts(hand_tip, skin, size, ctx["base_x"], ctx["bottom"])
    elif verb == "pour":
        cup = nouns[1] if len(nouns) > 1 else NOUNS["cup"]
        cup_c = anchor + np.array([-ctx["side"] * 1.6 * size, 0.3 * size])
        parts.append(Part(_body_poly(cup, size), cup.color, cup_c, band=cup.band, moving=False))
        reach = _seg(s, 0.05, 0.3)
        move = _seg(s, 0.3, 0.55) * (1 - _seg(s, 0.8, 0.97))
        tilt = _seg(s, 0.45, 0.6) * (1 - _seg(s, 0.75, 0.9))
        above = cup_c + np.array([ctx["side"] * 0.5 * size, -1.3 * size])
        body_c = anchor + move * (above - anchor)
        angle = -ctx["side"] * tilt * 1.9
        hand_tip = rest + reach * (anchor - rest) if move == 0 and reach < 1 else body_c + np.array([0, 0.3 * size])
        if tilt > 0.6:  # the stream
            top = body_c + np.array([-ctx["side"] * 0.5 * size, 0.1 * size])
            length = float(cup_c[1] - top[1])
            parts.append(Part(_rect(0.12 * size, length), main.color, np.array([top[0], top[1] + length / 2])))
    elif verb in ("stir", "spread", "scoop"):
        base_noun = nouns[-1] if len(nouns) > 1 else NOUNS["cup"]
        parts.append(Part(_body_poly(base_noun, size), base_noun.color, anchor, band=base_noun.band, moving=False))
        tool = NOUNS["knife"] if verb == "spread" else NOUNS["spoon"]
        work = _seg(s, 0.15, 0.3) * (1 - _seg(s, 0.85, 1.0))
        if verb == "stir":
            a = 2 * np.pi * ctx["turns"] * s
            off = np.array([0.22 * size * math.cos(a), 0.12 * size * math.sin(a)])
        elif verb == "spread":
            off = np.array([0.45 * size * math.sin(2 * np.pi * ctx["turns"] * s), 0.0])
        else:  # scoop: down into the jar, up and over to the side
            off = np.array([ctx["side"] * 0.8 * size * _seg(s, 0.55, 0.85), -0.6 * size * math.sin(np.pi * s)])
        tool_c = anchor + np.array([0, -0.5 * size]) + work * off
        tool_c = rest + _seg(s, 0.0, 0.15) * (tool_c - rest)
        parts.append(Part(_body_poly(tool, size), tool.color, tool_c, angle=0.25 * ctx["side"]))
        hand_tip = tool_c + np.array([0.0, -0.55 * size])
        if len(nouns) > 1 and verb != "stir":
            main = nouns[0]
        return parts + _hand_parts(hand_tip, skin, size, ctx["base_x"], ctx["bottom"])
    elif verb == "shake":
        reach = _seg(s, 0.05, 0.3)
        shaking = _seg(s, 0.3, 0.4) * (1 - _seg(s, 0.9, 1.0))
        body_c = anchor + np.array([0.0, -0.5 * size * shaking + 0.25 * size * shaking * math.sin(2 * np.pi * 3 * s)])
        hand_tip = rest + reach * (anchor - rest) if shaking == 0 else body_c + np.array([0.0, 0.3 * size])
    elif verb == "fold":
        reach = _seg(s, 0.05, 0.3)
        fold = _seg(s, 0.35, 0.9)
        scale = 1.0 - 0.45 * fold
        hand_tip = rest + reach * (anchor - rest)
    else:
        raise ValueError(f"unknown verb {verb}")
    lid = None
    if main.lid is not None and main.shape in ("jar", "bottle", "box"):
        lid = Part(_lid_poly(main, size), main.lid, body_c, angle=angle, scale=scale)
        lid.poly = lid.poly + _lid_offset(main, size)
    parts.append(Part(_body_poly(main, size), main.color, body_c, angle=angle, scale=scale, band=main.band))
    if lid is not None:
        parts.append(lid)
    return parts + _hand_parts(hand_tip, skin, size, ctx["base_x"], ctx["bottom"])


# --------------------------------------------------------------------------------------------------------------
# Class lists

DEMO_CLASSES = [
    "take_cup",
    "put_cup",
    "take_cheese",
    "put_cheese",
    "take_bread",
    "put_bread",
    "open_jam",
    "close_jam",
    "open_honey",
    "close_honey",
    "pour_water,cup",
    "stir_spoon,cup",
    "shake_tea,cup",
    "spread_jam,spoon,bread",
]

TINY_CLASSES = ["take_cup", "put_cup", "open_jam", "close_jam", "pour_water,cup", "stir_spoon,cup"]


def full_classes() -> list[str]:
    """61 GTEA61-like classes, most of them in take/put and open/close pairs."""
    out = []
    for n in (
        "bread",
        "cheese",
        "chocolate",
        "coffee",
        "cup",
        "honey",
        "hotdog",
        "jam",
        "ketchup",
        "mayonnaise",
        "mustard",
        "peanut",
        "spoon",
        "sugar",
        "tea",
        "water",
    ):
        out += [f"take_{n}", f"put_{n}"]
    for n in (
        "chocolate",
        "coffee",
        "honey",
        "jam",
        "ketchup",
        "mayonnaise",
        "mustard",
        "peanut",
        "sugar",
        "tea",
        "water",
    ):
        out += [f"open_{n}", f"close_{n}"]
    out += [
        "pour_water,cup",
        "pour_honey,bread",
        "pour_sugar,spoon,cup",
        "pour_ketchup,hotdog,bread",
        "pour_mustard,hotdog,bread",
        "pour_mayonnaise,cheese,bread",
        "stir_spoon,cup",
        "shake_tea,cup",
        "spread_jam,spoon,bread",
        "spread_peanut,spoon,bread",
        "scoop_coffee,spoon",
        "scoop_sugar,spoon",
        "fold_bread",
        "put_hotdog,bread",
        "put_cheese,bread",
    ]
    return sorted(set(out))[:61]


def _class_nouns(cls: str) -> tuple[str, list[Noun]]:
    verb, rest = cls.split("_", 1)
    names = rest.split(",")
    nouns = [NOUNS.get(n, NOUNS["cup"]) for n in names]
    if verb == "pour" and len(nouns) > 1:
        nouns = [nouns[0], nouns[-1]]
    return verb, nouns


# --------------------------------------------------------------------------------------------------------------
# Subjects (domain shift) and presets


@dataclass(frozen=True)
class SubjectStyle:
    table: tuple[int, int, int]
    texture: float  # amplitude of the table texture
    gain: float  # lighting
    tint: tuple[float, float, float]
    gradient: float
    skin: tuple[int, int, int]
    shake: float  # camera shake, in fractions of the frame height per frame


STYLES = {
    # table colour, texture, gain, tint, gradient, skin, shake. S2 (the test subject) has a cooler, darker and
    # rougher table and darker skin: a real but not total domain shift, like GTEA61's subjects.
    "S1": SubjectStyle((150, 122, 95), 18, 1.0, (1.0, 1.0, 1.0), 0.25, (225, 170, 140), 0.004),
    "S2": SubjectStyle((118, 118, 128), 26, 0.92, (0.95, 1.0, 1.07), 0.35, (175, 125, 95), 0.008),
    "S3": SubjectStyle((160, 150, 132), 12, 1.04, (1.04, 1.0, 0.94), 0.2, (235, 185, 155), 0.005),
    "S4": SubjectStyle((128, 138, 118), 22, 0.97, (1.0, 1.03, 0.97), 0.3, (200, 145, 110), 0.006),
}


@dataclass(frozen=True)
class Preset:
    width: int
    height: int
    classes: tuple[str, ...]
    videos: dict  # subject -> videos per class (int) or (lo, hi) range
    frames: tuple[int, int]


PRESETS: dict[str, Preset] = {
    "tiny": Preset(114, 64, tuple(TINY_CLASSES), {"S1": 1, "S2": 1, "S3": 1, "S4": 1}, (8, 12)),
    "demo": Preset(228, 128, tuple(DEMO_CLASSES), {"S1": 3, "S2": 5, "S3": 3, "S4": 3}, (12, 24)),
    "full": Preset(455, 256, tuple(full_classes()), {"S1": (1, 3), "S2": (1, 3), "S3": (1, 3), "S4": (1, 3)}, (20, 60)),
}


# --------------------------------------------------------------------------------------------------------------
# Rendering one video


def _texture(rng: np.random.Generator, h: int, w: int, amp: float) -> np.ndarray:
    small = rng.normal(0, 1, (max(h // 8, 2), max(w // 8, 2), 1)).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    fine = rng.normal(0, 0.35, (h, w, 1)).astype(np.float32)
    return amp * (big + fine)


def _fill(img: np.ndarray, pts: np.ndarray, color) -> None:
    cv2.fillPoly(img, [np.round(pts * 4).astype(np.int32)], color, lineType=cv2.LINE_AA, shift=2)


def _mask(h: int, w: int, pts: np.ndarray) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(pts * 4).astype(np.int32)], 1, shift=2)
    return m.astype(bool)


def render_video(cls: str, style: SubjectStyle, n_frames: int, width: int, height: int, rng: np.random.Generator):
    """Return (frames RGB uint8 list, flows (N-1, H, W, 2) float32, maps list of {0,255} uint8)."""
    verb, nouns = _class_nouns(cls)
    margin = int(0.15 * height) + 4
    ch, cw = height + 2 * margin, width + 2 * margin
    base = np.array(style.table, np.float32) * rng.uniform(0.9, 1.1, 3)
    canvas = np.empty((ch, cw, 3), np.float32)
    canvas[:] = base
    canvas += _texture(rng, ch, cw, style.texture)
    for _ in range(rng.integers(2, 5)):  # static clutter on the table
        c = rng.uniform([0, 0], [cw, ch])
        poly = (
            _rect(*rng.uniform(0.08, 0.25, 2) * height)
            if rng.random() < 0.5
            else _ellipse(*rng.uniform(0.04, 0.1, 2) * height)
        )
        col = tuple(float(x) for x in np.clip(base * rng.uniform(0.5, 1.4, 3), 0, 255))
        _fill(canvas, poly + c, col)
    # camera path (head motion): smooth drift plus shake, in canvas pixels
    t = np.arange(n_frames, dtype=np.float32)
    drift = rng.normal(0, 0.012 * height, (n_frames, 2)).cumsum(0)
    drift = cv2.GaussianBlur(drift.astype(np.float32)[:, None, :], (1, 5), 0)[:, 0, :] if n_frames >= 5 else drift
    shake = rng.normal(0, style.shake * height, (n_frames, 2))
    cam = np.clip(
        drift + shake + 0.3 * margin * np.sin(t[:, None] * rng.uniform(0.05, 0.2) + rng.uniform(0, 6, 2)),
        -margin + 1,
        margin - 1,
    )

    size = height * rng.uniform(0.3, 0.38)  # head-mounted camera: objects are large in the frame
    ctx = {
        "size": size,
        "anchor": np.array([margin + width * rng.uniform(0.35, 0.65), margin + height * rng.uniform(0.35, 0.55)]),
        "skin": tuple(int(np.clip(c * rng.uniform(0.92, 1.08), 0, 255)) for c in style.skin),
        "side": float(rng.choice([-1.0, 1.0])),
        "turns": float(rng.uniform(1.5, 3.0)),
        "w": width,
        "world_x0": margin,
        "bottom": float(margin + height),
    }
    ctx["base_x"] = margin + width * (0.5 + ctx["side"] * rng.uniform(0.1, 0.3))
    ctx["rest"] = np.array([ctx["base_x"], margin + height * 0.9])
    gamma = rng.uniform(0.8, 1.25)  # pace of the action
    pad0, pad1 = rng.uniform(0, 0.12), rng.uniform(0, 0.12)

    def s_of(k: int) -> float:
        x = k / max(n_frames - 1, 1)
        return float(np.clip((x - pad0) / (1 - pad0 - pad1), 0, 1) ** gamma)

    # lighting: gain, tint and a gradient, fixed per video
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    grad = 1 + style.gradient * ((xx / width - 0.5) * math.cos(ang) + (yy / height - 0.5) * math.sin(ang))
    light = (style.gain * rng.uniform(0.93, 1.07) * grad)[..., None] * np.array(style.tint, np.float32)

    scenes = [scene_parts(verb, nouns, s_of(k), ctx) for k in range(n_frames)]
    frames, maps = [], []
    flows = np.zeros((max(n_frames - 1, 0), height, width, 2), np.float32)
    for k in range(n_frames):
        ox, oy = margin + cam[k, 0], margin + cam[k, 1]
        m_aff = np.float32([[1, 0, -ox], [0, 1, -oy]])  # the frame is the canvas window at the camera offset
        img = cv2.warpAffine(canvas, m_aff, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        shift = np.array([ox, oy])
        moving = np.zeros((height, width), bool)
        nxt = scenes[k + 1] if k + 1 < n_frames else None
        for j, part in enumerate(scenes[k]):
            pts = part.world() - shift
            _fill(img, pts, part.color)
            if part.band is not None:  # label band: the middle third of the part
                band = part.poly.copy()
                band[:, 1] = np.clip(band[:, 1], part.poly[:, 1].min() * 0.3, part.poly[:, 1].max() * 0.3)
                _fill(img, Part(band, part.band, part.center, part.angle, part.scale).world() - shift, part.band)
            if nxt is None or j >= len(nxt):
                continue
            q = nxt[j]
            mask = _mask(height, width, pts)
            if not mask.any():
                continue
            # rigid motion of this part between k and k+1, in world coordinates (camera motion excluded)
            ys, xs = np.nonzero(mask)
            p = np.stack([xs, ys], 1).astype(np.float32) + shift
            c0, c1 = part.center, q.center
            da = q.angle - part.angle
            r = np.array([[math.cos(da), -math.sin(da)], [math.sin(da), math.cos(da)]])
            p1 = c1 + (q.scale / part.scale) * (p - c0) @ r.T
            d = p1 - p
            # occlusion: later parts overwrite earlier ones, like the rendering
            flows[k, ys, xs] = d
            mv = np.hypot(d[:, 0], d[:, 1]) > 0.3
            moving[ys, xs] = mv
        img = img * light + rng.normal(0, 2.0, img.shape).astype(np.float32)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        maps.append(moving)
    # warp flows look like TV-L1 estimates: smooth edges and a little noise
    for k in range(len(flows)):
        flows[k] = cv2.GaussianBlur(flows[k], (0, 0), 1.2) + rng.normal(0, 0.08, flows[k].shape).astype(np.float32)
    out_maps = []
    kernel = np.ones((5, 5), np.uint8)
    for k in range(n_frames):
        m = maps[min(k, n_frames - 2)] if n_frames > 1 else maps[0]
        out_maps.append(cv2.dilate(m.astype(np.uint8), kernel) * 255)
    return frames, flows, out_maps


# --------------------------------------------------------------------------------------------------------------
# Writing the dataset


def _write_png(path: Path, img: np.ndarray, rgb: bool = False) -> None:
    if rgb:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise FparError(f"cannot write {path}; check the disk space and permissions")


MARKER = ".fpar-synth.json"  # in every dataset this generator writes: --overwrite replaces only such folders


def _ours(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def synthesize(out: str | Path, *, preset: str = "demo", seed: int = 0, overwrite: bool = False, progress=None) -> dict:
    """Write a synthetic dataset in the GTEA61 course layout under ``out``. Returns a summary dict.

    The dataset is built beside ``out`` (``OUT.partial``) and renamed into place, so it appears complete or not at
    all. ``overwrite`` replaces an existing dataset only when this generator wrote it (its ``.fpar-synth.json``
    marker): the old one is moved aside, the new one moved in, then the old one removed; a folder fpar did not
    write is never deleted.
    """
    if preset not in PRESETS:
        raise FparError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    if seed < 0:
        raise FparError(f"--seed {seed}: give a seed of at least 0")
    cfg = PRESETS[preset]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FparError(f"{out} is a file; give a folder for the dataset")
    old = out.with_name(out.name + ".old")
    if not out.exists() and old.is_dir() and _ours(old):  # a kill between the two renames of a swap
        old.rename(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FparError(f"{out} already exists and is not empty; choose another folder or pass --overwrite")
        if not _ours(out):
            raise FparError(
                f"{out} was not written by `fpar data synth` (no {MARKER}); --overwrite only replaces fpar's own "
                "datasets: choose another folder"
            )
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        if not _ours(tmp):
            raise FparError(f"{tmp} exists and was not written by fpar; move it away or choose another folder")
        shutil.rmtree(tmp)  # a build killed half-way
    tmp.mkdir(parents=True)
    (tmp / MARKER).write_text(json.dumps({"preset": preset, "seed": seed}))
    fr = tmp / "processed_frames2"
    master = np.random.default_rng(seed)
    jobs = []
    for si, subj in enumerate(SUBJECTS):
        spec = cfg.videos[subj]
        for ci, cls in enumerate(cfg.classes):
            n_inst = spec if isinstance(spec, int) else int(master.integers(spec[0], spec[1] + 1))
            for inst in range(1, n_inst + 1):
                jobs.append((subj, si, cls, ci, inst))
    n_videos = len(jobs)
    quirk_rng = np.random.default_rng(seed + 1)
    missing_first = set(quirk_rng.choice(n_videos, size=max(1, n_videos // 20), replace=False).tolist())
    n_flows_eq = set(quirk_rng.choice(n_videos, size=max(1, n_videos // 10), replace=False).tolist())
    dup_video = int(quirk_rng.integers(n_videos))
    frames_total = 0
    it = progress(jobs, desc="synth", unit="video") if progress else jobs
    for j, (subj, si, cls, ci, inst) in enumerate(it):
        rng = np.random.default_rng([seed, si, ci, inst])
        n = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
        frames, flows, maps = render_video(cls, STYLES[subj], n, cfg.width, cfg.height, rng)
        rel = Path(subj) / cls / str(inst)
        (fr / rel / "rgb").mkdir(parents=True, exist_ok=True)
        (fr / rel / "mmaps").mkdir(parents=True, exist_ok=True)
        fxd, fyd = tmp / "flow_x_processed" / rel, tmp / "flow_y_processed" / rel
        fxd.mkdir(parents=True, exist_ok=True)
        fyd.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(frames, 1):
            _write_png(fr / rel / "rgb" / f"rgb{k:04d}.png", img, rgb=True)
        for k, m in enumerate(maps, 1):
            if k == 1 and j in missing_first:
                continue  # GTEA61 quirk: some first motion maps are missing
            _write_png(fr / rel / "mmaps" / f"map{k:04d}.png", m)
        n_flow = len(flows) + (1 if j in n_flows_eq else 0)  # GTEA61 has N-1 or N flows for N frames
        for k in range(n_flow):
            f = flows[min(k, len(flows) - 1)]
            _write_png(fxd / f"flow_x_{k + 1:05d}.png", encode_flow(f[..., 0]))
            _write_png(fyd / f"flow_y_{k + 1:05d}.png", encode_flow(f[..., 1]))
        if j == dup_video and n_flow >= 2:
            shutil.copy(fxd / "flow_x_00002.png", fxd / "flow_x_00002(1).png")
        frames_total += n
    for d in (tmp, fr, fr / "S1", fr / "S2" / cfg.classes[0]):
        (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    if out.exists() and any(out.iterdir()):  # --overwrite of fpar's own dataset: swap, then remove the old one
        if old.exists():
            if not _ours(old):
                raise FparError(f"{old} exists and was not written by fpar; move it away to let --overwrite swap")
            shutil.rmtree(old)  # an earlier swap's leftover
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        if out.exists():
            out.rmdir()  # an empty folder
        tmp.rename(out)  # the dataset appears complete or not at all
    return {
        "root": str(out),
        "preset": preset,
        "seed": seed,
        "videos": n_videos,
        "classes": len(cfg.classes),
        "frames": frames_total,
        "size": f"{cfg.width}x{cfg.height}",
    }
