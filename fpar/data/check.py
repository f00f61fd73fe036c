"""`fpar data check`: scan a dataset and report what fpar will do with it."""

from __future__ import annotations

import os
from dataclasses import asdict

from ..errors import FparError
from .imageio import read_grey, read_mmap, read_rgb
from .layout import Problem, check_lengths, discover, split_problems


def check_dataset(
    root: str,
    *,
    frames: int = 7,
    flow_stack: int = 5,
    train: list[str] | None = None,
    test: list[str] | None = None,
    frames_dir: str = "processed_frames2",
    decode: bool = True,
) -> dict:
    """Everything `fpar data check` prints, as a dict (``--json`` prints it as is).

    ``decode`` opens every image (to find unreadable or truncated files); without it only names are checked.
    """
    manifest = discover(root, frames_dir=frames_dir)
    train = train or ["S1", "S3", "S4"]
    test = test or ["S2"]
    problems: list[Problem] = list(manifest.problems)
    problems += check_lengths(manifest, frames=frames, flow_stack=flow_stack)
    subjects = manifest.subjects()
    present = [s for s in train + test if s in subjects]
    problems += split_problems(manifest, [s for s in train if s in subjects], [s for s in test if s in subjects])
    for s in train + test:
        if s not in subjects:
            problems.append(Problem("missing_subject", s, f"subject {s} of the default split has no videos", True))
    if decode:
        for v in manifest.videos:
            for paths, reader in (
                (v.rgb, read_rgb),
                (v.flow_x, read_grey),
                (v.flow_y, read_grey),
                (sorted(set(v.mmaps)), read_mmap),
            ):
                for p in paths:
                    try:
                        reader(p)
                    except FparError:
                        problems.append(
                            Problem(
                                "unreadable_image",
                                os.path.relpath(p, manifest.root),
                                "cannot be decoded: replace or delete it",
                                True,
                            )
                        )
                        v.usable = False
    usable = [v for v in manifest.videos if v.usable]
    frame_counts = [v.num_frames for v in usable] or [0]
    by_split = {
        "train": sum(1 for v in usable if v.subject in train),
        "test": sum(1 for v in usable if v.subject in test),
    }
    fatal = [p for p in problems if p.fatal and p.kind != "missing_subject"]
    ok = bool(usable) and by_split["train"] > 0 and by_split["test"] > 0
    return {
        "root": manifest.root,
        "layout": manifest.layout,
        "videos": len(manifest.videos),
        "usable_videos": len(usable),
        "classes": manifest.classes,
        "subjects": subjects,
        "splits": {"train": train, "test": test, **{f"{k}_videos": n for k, n in by_split.items()}},
        "frames": {
            "min": min(frame_counts),
            "max": max(frame_counts),
            "mean": round(sum(frame_counts) / max(len(frame_counts), 1), 1),
        },
        "problems": [asdict(p) for p in problems],
        "fatal_problems": len(fatal),
        "usable": ok,
        "present_subjects": present,
    }


def format_report(r: dict, *, max_rows: int = 40) -> str:
    lines = [
        f"dataset {r['root']} ({r['layout']} layout)",
        f"  {r['videos']} videos ({r['usable_videos']} usable), {len(r['classes'])} classes, "
        f"frames per video {r['frames']['min']}-{r['frames']['max']} (mean {r['frames']['mean']})",
        "  subjects: " + ", ".join(f"{s}: {n}" for s, n in r["subjects"].items()),
        f"  split: train {','.join(r['splits']['train'])} = {r['splits']['train_videos']} videos, "
        f"test {','.join(r['splits']['test'])} = {r['splits']['test_videos']} videos",
    ]
    probs = r["problems"]
    if probs:
        kinds: dict[str, int] = {}
        for p in probs:
            kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
        lines.append(f"  {len(probs)} problems: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        for p in probs[:max_rows]:
            lines.append(f"    [{p['kind']}] {p['path']}: {p['message']}")
        if len(probs) > max_rows:
            lines.append(f"    ... {len(probs) - max_rows} more (use --json for all)")
    else:
        lines.append("  no problems found")
    lines.append("  usable: yes" if r["usable"] else "  usable: NO (see the problems above)")
    return "\n".join(lines)
