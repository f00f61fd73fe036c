"""The native EGTEA Gaze+ and EPIC-KITCHENS-100 readers against miniature datasets in the publishers' formats.

Both datasets are built once for the module by `tests.native_datasets` and treated as read-only; every expected
value comes from the builders' *facts* or from a hand computation, never from the reader under test. Tests that
damage a dataset work on a copy. Tar indices and clip probes go to a module-private ``$FPAR_CACHE_DIR``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fpar.cli import main
from fpar.config import load_config
from fpar.data.check import check_dataset
from fpar.data.dataset import ClipDataset, make_splits
from fpar.data.frames import FrameSeq, split_ref, tar_members
from fpar.data.imageio import read_grey, read_rgb, read_rgb_many
from fpar.data.manifest import Vocabulary
from fpar.data.readers import read_dataset
from fpar.engine.metrics import (
    classification_metrics,
    epic_action_ranks,
    group_masks,
    mean_class_accuracy,
    topk_accuracy,
)
from fpar.errors import FparError
from tests.conftest import tiny_args
from tests.native_datasets import frame_index, make_egtea, make_epic100

REPO = Path(__file__).resolve().parents[1]
STAGE1 = REPO / "configs" / "ego_rnn_stage1.yaml"


# --------------------------------------------------------------------------------------------------------------
# Fixtures: one private cache, one build of each dataset


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """``$FPAR_CACHE_DIR`` for the whole module (the tar index is cached per process, so per-test is too late)."""
    path = tmp_path_factory.mktemp("fpar-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FPAR_CACHE_DIR", str(path))
        yield path


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def egtea(tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("native") / "egtea"
    facts = make_egtea(root)
    return root, facts


@pytest.fixture(scope="module")
def epic(tmp_path_factory, cache):
    """EPIC-100 with the CSVs in ``ROOT/annotations`` (one of the places the reader looks); also the file list."""
    root = tmp_path_factory.mktemp("native") / "epic"
    facts = make_epic100(root, root / "annotations")
    return root, facts, _files(root)


def _read(root, *overrides):
    cfg = load_config(None, [f"data.root={root}", *overrides])
    return cfg, read_dataset(cfg.data)


@pytest.fixture(scope="module")
def epic_manifest(epic):
    root, _, _ = epic
    return _read(root, "data.format=epic100")


def _split_lines(k: int, role: str, clips: int = 24) -> list[int]:
    """Clip indices of ``<role>_split<k>.txt`` in line order (the builder's rule: test when i % 4 == k - 1)."""
    return [i for i in range(clips) if (i % 4 == k - 1) == (role == "test")]


def _segments(facts) -> dict[str, dict]:
    return {s["narration_id"]: {**s, "role": role} for role, segs in facts["segments"].items() for s in segs}


def _csv_line(facts, nid: str) -> tuple[str, int]:
    """(role, 1-based file line) of a segment: the header is line 1, rows follow in the builder's order."""
    for role, segs in facts["segments"].items():
        for i, s in enumerate(segs):
            if s["narration_id"] == nid:
                return role, i + 2
    raise KeyError(nid)


# --------------------------------------------------------------------------------------------------------------
# EGTEA Gaze+


@pytest.mark.parametrize("k,key", [(1, "data.egtea.split"), (2, "data.split"), (3, "data.split")])
def test_egtea_splits_labels_vocabulary(egtea, k, key):
    root, facts = egtea
    cfg, m = _read(root, "data.format=egtea", f"{key}={k}")
    assert cfg.data.egtea.split == k and m.layout == "egtea"

    # every line of both split files is a record, the missing clip included (unusable)
    by_role = {r: [v for v in m.videos if v.split == r] for r in ("train", "test")}
    assert {r: len(vs) for r, vs in by_role.items()} == facts["split_counts"][k]
    for role in ("train", "test"):
        assert [v.instance for v in by_role[role]] == [facts["clips"][i] for i in _split_lines(k, role)]
    missing = facts["missing_clip"]
    (rec,) = [v for v in m.videos if v.instance == missing]
    assert not rec.usable and len(rec.rgb) == 0
    assert [v.instance for v in m.videos if not v.usable] == [missing]

    # the missing clip's problem: its path, fatal, and the line of the split file that lists it
    role = "test" if 1 % 4 == k - 1 else "train"
    line = _split_lines(k, role).index(facts["clips"].index(missing)) + 1
    (p,) = [p for p in m.problems if p.kind == "missing_clip"]
    session = missing.rsplit("-", 4)[0]
    assert p.path == f"cropped_clips/{session}/{missing}.mp4" and p.fatal and p.line == line
    assert f"{role}_split{k}.txt line {line}" in p.message
    assert [p.kind for p in m.problems] == ["missing_clip"]

    # labels, 0-based; the first noun is the noun target, every noun is kept
    for v in m.videos:
        action, verb, nouns = facts["labels"][v.instance]
        assert (v.label, v.verb_label, v.noun_label, v.meta["nouns"]) == (action, verb, nouns[0], nouns)
        assert (v.cls, v.verb, v.noun) == (facts["actions"][action], facts["verbs"][verb], facts["nouns"][nouns[0]])
        assert v.subject == v.instance.split("-")[0] and v.meta["session"] == v.instance.rsplit("-", 4)[0]
    assert any(len(v.meta["nouns"]) == 3 for v in m.videos)
    multi = {v.instance for v in m.videos if len(v.meta["nouns"]) > 1}
    assert multi == set(facts["multi_noun_clips"])
    assert facts["unused_first_noun"] not in {v.noun_label for v in m.videos}

    # vocabulary: names split on the last space (they hold spaces, "/" and ",")
    assert m.classes == m.vocab.actions == facts["actions"]
    assert m.vocab.verbs == facts["verbs"] and m.vocab.nouns == facts["nouns"]
    assert "Move Around eating_utensil" in m.classes and "Pour seasoning,seasoning_container,salad" in m.classes
    assert "Inspect/Read" in m.vocab.verbs and "Move Around" in m.vocab.verbs
    for action, verb, nouns in facts["labels"].values():
        assert (m.vocab.action_verb[action], m.vocab.action_noun[action]) == (verb, nouns[0])

    # frame counts: what the MP4s decode to
    for v in m.videos:
        if v.usable:
            assert len(v.rgb) == facts["frames"][v.instance]
            assert isinstance(v.rgb, FrameSeq) and v.rgb[0].endswith(f"{v.instance}.mp4::0")
    shortest = next(v for v in m.videos if v.instance == facts["shortest_clip"])
    assert len(shortest.rgb) == 15

    # make_splits: the usable train / test records
    s = make_splits(m, cfg.data)
    assert len(s.train) == facts["split_counts"][k]["train"] - (role == "train")
    assert len(s.test) == facts["split_counts"][k]["test"] - (role == "test")
    assert s.select_on == "test" and s.name == f"EGTEA split {k}"


def test_egtea_bad_split_number(egtea):
    root, _ = egtea
    with pytest.raises(FparError, match="splits 1, 2 and 3"):
        _read(root, "data.format=egtea", "data.split=4")


def test_egtea_decoding_frames_and_clip_dataset(egtea):
    root, facts = egtea
    cfg, m = _read(root, "data.format=egtea", *tiny_args(root)[1:])
    short = next(v for v in m.videos if v.instance == facts["shortest_clip"])
    other = next(v for v in m.videos if v.usable and v.instance != short.instance)

    # VIDEO::K is decoded frame K (0-based) of the clip: the builder stamps frame K with K + 1
    singles = [read_rgb(p) for p in short.rgb]
    assert [frame_index(img) for img in singles] == list(range(1, 16))
    assert singles[0].shape == (facts["size"][1], facts["size"][0], 3) and singles[0].dtype == np.uint8
    batch = read_rgb_many(list(short.rgb))
    assert all(np.array_equal(a, b) for a, b in zip(batch, singles))
    # several clips, out of order and repeated, in one call
    picks = [other.rgb[-1], short.rgb[7], other.rgb[2], short.rgb[7]]
    got = read_rgb_many(picks)
    assert [frame_index(g) for g in got] == [len(other.rgb), 8, 3, 8]
    assert all(np.array_equal(g, read_rgb(p)) for g, p in zip(got, picks))

    # a ClipDataset item: the labels of the clip, RGB in the clip's own colour (not BGR)
    s = make_splits(m, cfg.data)
    ds = ClipDataset(m, s.test, cfg.data)
    assert len(ds) == len(s.test)
    for i in range(len(ds)):
        item = ds[i]
        v = m.videos[item["index"]]
        action, verb, nouns = facts["labels"][v.instance]
        assert (item["label"], item["verb"], item["noun"]) == (action, verb, nouns[0])
        assert item["rgb"].shape == (3, 3, 64, 64)
        assert item["rgb"].dtype == torch.uint8  # normalised on the device, batch by batch
        rgb = item["rgb"].float() / 255
        colour = rgb[:, :, -8:, :].flatten(2).median(2).values.mean(0) * 255  # bottom rows: background
        assert colour.tolist() == pytest.approx(list(facts["colours"][action]), abs=12)


def test_egtea_check_dataset(egtea):
    root, facts = egtea
    cfg = load_config(None, [f"data.root={root}", "data.format=egtea", "data.split=1"])
    r = check_dataset(cfg.data, frames=3)
    usable = {"train": facts["split_counts"][1]["train"] - 1, "test": facts["split_counts"][1]["test"]}
    assert r["format"] == "egtea" and r["usable"]
    assert r["segments"] == len(facts["frames"]) == usable["train"] + usable["test"]
    assert r["split_counts"] == usable
    assert r["classes"] == facts["actions"] and r["verbs"] == facts["verbs"] and r["nouns"] == facts["nouns"]
    assert r["frames"]["min"] == 15 and r["frames"]["max"] == max(facts["frames"].values())
    assert all("line" in p for p in r["problems"])
    (p,) = [p for p in r["problems"] if p["kind"] == "missing_clip"]
    # clip 1 is the first line of train_split1.txt (clip 0 is in test_split1)
    assert p["line"] == 1 and p["fatal"] and facts["missing_clip"] in p["path"]
    assert r["fatal_problems"] == 1


def test_egtea_unknown_ids_and_bad_lines(egtea, tmp_path):
    root, facts = egtea
    copy = tmp_path / "egtea"
    shutil.copytree(root, copy)
    split1 = copy / "action_annotation" / "train_split1.txt"
    n = facts["split_counts"][1]["train"]
    with open(split1, "a", newline="\n") as f:
        f.write("OP01-R01-PastaSalad-1000-2000-F000024-F000047 999 1 1\n")  # action id outside the index
        f.write("OP01-R01-PastaSalad-3000-4000-F000072-F000095 1 1 1 42\n")  # a noun id outside it
        f.write("this line is not a split line\n")
    _, m = _read(copy, "data.format=egtea", "data.split=1")
    unknown = [p for p in m.problems if p.kind == "unknown_id"]
    assert [p.line for p in unknown] == [n + 1, n + 2]
    assert all(p.path == "action_annotation/train_split1.txt" for p in unknown)
    assert "action id 999" in unknown[0].message and "noun id 42" in unknown[1].message
    (bad,) = [p for p in m.problems if p.kind == "bad_line"]
    assert bad.line == n + 3
    # the rest is read as before
    assert sum(v.split == "train" for v in m.videos) == n
    assert sum(v.split == "test" for v in m.videos) == facts["split_counts"][1]["test"]
    assert m.classes == facts["actions"]


# --------------------------------------------------------------------------------------------------------------
# EPIC-KITCHENS-100


def test_epic_segments_labels_and_actions(epic, epic_manifest):
    root, facts, _ = epic
    cfg, m = epic_manifest
    assert m.layout == "epic100"
    segs = _segments(facts)
    got = {v.instance: v for v in m.videos}
    assert set(got) == set(segs)  # test segments are not in the labelled manifest
    assert not set(facts["test_ids"]) & set(got)
    for role in ("train", "validation"):
        assert [v.instance for v in m.videos if v.split == role] == [s["narration_id"] for s in facts["segments"][role]]
    for nid, s in segs.items():
        v = got[nid]
        assert v.usable and v.split == s["role"] and v.subject == s["participant"] and v.meta["video"] == s["video"]
        assert (v.verb_label, v.noun_label) == (s["verb_class"], s["noun_class"])
        assert (v.verb, v.noun) == (facts["verbs"][s["verb_class"]], facts["nouns"][s["noun_class"]])
        assert v.meta["all_noun_classes"] == s["all_noun_classes"]
        assert v.meta["narration"] == s["narration"]
    # the action classes: the (verb, noun) pairs seen, in id order
    pairs = sorted({(s["verb_class"], s["noun_class"]) for s in segs.values()})
    assert m.classes == [f"{facts['verbs'][a]} {facts['nouns'][b]}" for a, b in pairs]
    assert list(zip(m.vocab.action_verb, m.vocab.action_noun)) == pairs
    assert m.vocab.verbs == facts["verbs"] and m.vocab.nouns == facts["nouns"]
    for v in m.videos:
        assert pairs[v.label] == (v.verb_label, v.noun_label) and v.cls == m.classes[v.label]
    # the quoted fields: a narration with a comma, two nouns; the empty narration timestamp
    comma = got[facts["comma_narration"]]
    assert "," in comma.meta["narration"] and comma.meta["narration"] == segs[facts["comma_narration"]]["narration"]
    assert len(comma.meta["all_noun_classes"]) == 2
    assert got[facts["empty_narration_timestamp"]].meta["narration_s"] is None
    assert all(
        isinstance(v.meta["narration_s"], float) for n, v in got.items() if n != facts["empty_narration_timestamp"]
    )
    # the first segment of every video starts at 0 s = frame 1
    assert all(got[f"{vid}_0"].meta["start_s"] == 0.0 for vid, i in facts["videos"].items() if i["split"] != "test")
    s = make_splits(m, cfg.data)
    assert (len(s.train), len(s.test)) == (len(facts["segments"]["train"]), len(facts["segments"]["validation"]))


def test_epic_rgb_ranges_and_overrun(epic, epic_manifest):
    root, facts, _ = epic
    _, m = epic_manifest
    segs = _segments(facts)
    for v in m.videos:
        s = segs[v.instance]
        info = facts["videos"][s["video"]]
        start, stop = s["start_frame"], min(s["stop_frame"], info["frames"])
        assert len(v.rgb) == stop - start + 1 and (v.meta["start_frame"], v.meta["stop_frame"]) == (start, stop)
        base = root / s["participant"] / "rgb_frames"
        where = f"{base / s['video']}.tar::" if info["rgb"] == "tar" else f"{base / s['video']}/"
        assert v.rgb[0] == f"{where}frame_{start:010d}.jpg" and v.rgb[-1] == f"{where}frame_{stop:010d}.jpg"
        if info["rgb"] == "dir":
            assert os.path.isfile(v.rgb[0]) and os.path.isfile(v.rgb[-1])
    over = facts["overrun"]
    s = segs[over]
    assert s["stop_frame"] > facts["videos"][s["video"]]["frames"]
    (p,) = [p for p in m.problems if p.kind == "frame_range"]
    role, line = _csv_line(facts, over)
    assert not p.fatal and p.line == line and over in p.message and p.path == f"P01/rgb_frames/{s['video']}"
    assert next(v for v in m.videos if v.instance == over).usable
    ends = next(v for v in m.videos if v.instance == facts["ends_at_last"])
    assert ends.rgb[-1].endswith(f"frame_{facts['videos'][segs[facts['ends_at_last']]['video']]['frames']:010d}.jpg")


def test_epic_flow_ranges_strides_and_scales(epic, epic_manifest):
    root, facts, _ = epic
    _, m = epic_manifest
    segs = _segments(facts)
    seen = set()
    for v in m.videos:
        s = segs[v.instance]
        info = facts["videos"][s["video"]]
        assert v.flow_stride == info["stride"]
        ext = len(s["video"].split("_")[1]) == 3
        assert v.flow_scale == pytest.approx(8 / 20 if ext else 25 / 20)
        want = facts["flow_range"][v.instance]
        if want is None:
            assert v.flow_x == [] and v.flow_y == [] and "flow_frames" not in v.meta
            continue
        first, last = want
        seen.add((info["flow"], info["stride"]))
        assert v.meta["flow_frames"] == [first, last]
        assert len(v.flow_x) == len(v.flow_y) == last - first + 1 == v.num_flows
        base = root / s["participant"] / "flow_frames" / s["video"]
        for seq, c in ((v.flow_x, "u"), (v.flow_y, "v")):
            where = f"{base}.tar::{c}/" if info["flow"] == "tar" else f"{base}/{c}/"
            assert seq[0] == f"{where}frame_{first:010d}.jpg" and seq[-1] == f"{where}frame_{last:010d}.jpg"
    assert seen == {("tar", 2), ("dir", 1), ("dir", 2)}  # half-rate tar, full-rate and half-rate folders
    # the segment that stops on frame N of an extension video: its flow ends on N - 1
    ends = segs[facts["ends_at_last"]]
    assert facts["flow_range"][facts["ends_at_last"]][1] == facts["videos"][ends["video"]]["frames"] - 1
    # decoded flow: the stamped file number, u and v not swapped (u's bar is bright, v's dark)
    for nid in ("P01_01_2", "P02_102_3", facts["overrun"]):
        v = next(x for x in m.videos if x.instance == nid)
        first, last = facts["flow_range"][nid]
        u0, ul, v0 = read_grey(v.flow_x[0]), read_grey(v.flow_x[-1]), read_grey(v.flow_y[0])
        assert (frame_index(u0), frame_index(ul), frame_index(v0)) == (first, last, first)
        assert u0.ndim == 2 and u0[20:].max() > 150 and v0[20:].min() < 106
    # the video without flow: one problem, not one per segment, with the line of its first segment
    no_flow = [vid for vid, i in facts["videos"].items() if i["flow"] is None]
    assert no_flow == ["P02_03"]
    (p,) = [p for p in m.problems if p.kind == "missing_modality"]
    assert not p.fatal and p.path == "P02/flow_frames/P02_03" and p.line == _csv_line(facts, "P02_03_0")[1]
    assert sorted(p.kind for p in m.problems) == ["frame_range", "missing_modality"]


def test_epic_tars_read_in_place(epic, epic_manifest, cache):
    root, facts, before = epic
    _, m = epic_manifest
    prefixes = {}
    for nid in ("P01_01_1", facts["overrun"], "P02_03_4"):  # './frame_' members, then bare 'frame_' members
        v = next(x for x in m.videos if x.instance == nid)
        tar, member = split_ref(v.rgb[0])
        assert tar.endswith(".tar") and member.startswith("frame_")
        with tarfile.open(tar) as tf:
            prefixes[v.meta["video"]] = {n.name[: -len("frame_0000000001.jpg")] for n in tf if n.isfile()}
        start = v.meta["start_frame"]
        ks = [0, len(v.rgb) // 2, len(v.rgb) - 1]
        singles = [read_rgb(v.rgb[k]) for k in ks]
        assert [frame_index(img) for img in singles] == [start + k for k in ks]
        assert singles[0].shape == (36, 64, 3)
        assert all(np.array_equal(a, b) for a, b in zip(read_rgb_many([v.rgb[k] for k in ks]), singles))
        assert [frame_index(img) for img in read_rgb_many(list(v.rgb))] == list(range(start, start + len(v.rgb)))
    assert prefixes == {"P01_01": {"./"}, "P02_03": {""}}

    # one index per tar, under $FPAR_CACHE_DIR/tar-index, and nothing written into the dataset
    indices = [json.loads(p.read_text()) for p in (cache / "tar-index").glob("*.json")]
    want = {
        "rgb P01_01": {f"frame_{j:010d}.jpg" for j in range(1, 181)},
        "rgb P02_03": {f"frame_{j:010d}.jpg" for j in range(1, 161)},
        "flow P01_01": {f"{c}/frame_{k:010d}.jpg" for c in "uv" for k in range(1, 91)},
    }
    for name, members in want.items():
        assert sum(set(ix) == members for ix in indices) == 1, name
    assert _files(root) == before


def test_epic_truncated_tar_is_a_clear_error(epic, tmp_path):
    root, facts, _ = epic
    tar = root / "P01" / "rgb_frames" / "P01_01.tar"
    with tarfile.open(tar) as tf:
        m50 = tf.getmembers()[50]
    data = tar.read_bytes()
    for name, cut in (("mid-member", m50.offset_data + m50.size // 2), ("at-a-header", m50.offset)):
        bad = tmp_path / f"{name}.tar"
        bad.write_bytes(data[:cut])
        with pytest.raises(FparError, match="truncated") as e:
            tar_members(bad)
        assert str(bad) in str(e.value)
    # through the reader: the dataset's own path in the message
    copy = tmp_path / "epic"
    shutil.copytree(root, copy)
    broken = copy / "P02" / "rgb_frames" / "P02_03.tar"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 3])
    # through the reader: that video's segments are one problem each, naming the tar; the other videos are read
    _, m = _read(copy, "data.format=epic100")
    bad = [p for p in m.problems if p.kind == "missing_video"]
    assert bad and all(str(broken) in p.message and p.fatal and p.line for p in bad)
    assert {v.meta["video"] for v in m.videos} == set(facts["videos"]) - {"P02_03", "P01_101"}


def test_epic_group_masks(epic, epic_manifest):
    _, facts, _ = epic
    cfg, m = epic_manifest
    s = make_splits(m, cfg.data)
    segs = _segments(facts)
    for indices in (s.test, s.train):
        rows = [segs[m.videos[i].instance] for i in indices]
        unseen = [r["participant"] in facts["unseen"] for r in rows]
        tv = [r["verb_class"] in facts["tail_verbs"] for r in rows]
        tn = [r["noun_class"] in facts["tail_nouns"] for r in rows]
        want = {
            "unseen_verb_top1": unseen,
            "unseen_noun_top1": unseen,
            "unseen_action_top1": unseen,
            "tail_verb_top1": tv,
            "tail_noun_top1": tn,
            "tail_action_top1": [a or b for a, b in zip(tv, tn)],
        }
        want = {k: v for k, v in want.items() if any(v)}  # a group no segment is in is not listed
        assert group_masks(m, indices) == want
    test_masks = group_masks(m, s.test)
    assert sum(test_masks["unseen_action_top1"]) == sum(
        1 for r in facts["segments"]["validation"] if r["participant"] == "P03"
    )
    assert "unseen_action_top1" not in group_masks(m, s.train)  # P03 is validation-only


# --------------------------------------------------------------------------------------------------------------
# Metrics, by hand


def _logp(*rows) -> torch.Tensor:
    """Logits whose softmax is exactly the given probabilities."""
    return torch.tensor(rows, dtype=torch.float64).log()


def _vocab(verbs: int, nouns: int) -> Vocabulary:
    pairs = [(v, n) for v in range(verbs) for n in range(nouns)]
    return Vocabulary(
        [f"v{v} n{n}" for v, n in pairs],
        [f"v{i}" for i in range(verbs)],
        [f"n{i}" for i in range(nouns)],
        [v for v, _ in pairs],
        [n for _, n in pairs],
    )


def test_action_counts_only_when_verb_and_noun_are_right():
    # argmax verb is 0 and argmax noun is 0 in every row
    vl = _logp(*[[0.6, 0.3, 0.1]] * 4)
    nl = _logp(*[[0.7, 0.2, 0.1]] * 4)
    verbs = torch.tensor([0, 0, 1, 2])  # right, right, wrong, wrong
    nouns = torch.tensor([2, 0, 0, 1])  # wrong, right, right, wrong
    labels = verbs * 3 + nouns
    m = classification_metrics(
        torch.zeros(4, 9), labels, _vocab(3, 3), verb_logits=vl, noun_logits=nl, verb_labels=verbs, noun_labels=nouns
    )
    assert (m["verb_top1"], m["noun_top1"], m["action_top1"]) == (50.0, 50.0, 25.0)
    assert m["verb_top5"] == m["noun_top5"] == 100.0  # k is capped at the 3 classes


def test_action_top5_follows_the_product_ranking():
    # p(verb) = .5 .3 .2, p(noun) = .6 .3 .1: products .30 (0,0) .18 (1,0) .15 (0,1) .12 (2,0) .09 (1,1)
    # | .06 (2,1) .05 (0,2) .03 (1,2) .02 (2,2)
    vl = _logp(*[[0.5, 0.3, 0.2]] * 4)
    nl = _logp(*[[0.6, 0.3, 0.1]] * 4)
    verbs = torch.tensor([1, 2, 1, 0])
    nouns = torch.tensor([0, 1, 1, 0])  # ranks 2 (top-5), 6 (not top-5), 5 (top-5), 1 (top-1)
    m = classification_metrics(
        torch.zeros(4, 9),
        verbs * 3 + nouns,
        _vocab(3, 3),
        verb_logits=vl,
        noun_logits=nl,
        verb_labels=verbs,
        noun_labels=nouns,
    )
    assert m["action_top1"] == 25.0 and m["action_top5"] == 75.0
    assert m["verb_top5"] == m["noun_top5"] == 100.0  # each part is in its top 5, the pair (2, 1) is not
    rv, rn = epic_action_ranks(vl, nl, 9)
    assert list(zip(rv[0].tolist(), rn[0].tolist())) == [
        (0, 0),
        (1, 0),
        (0, 1),
        (2, 0),
        (1, 1),
        (2, 1),
        (0, 2),
        (1, 2),
        (2, 2),
    ]
    # exact fractions (float64), like every other figure: one right of three
    m = classification_metrics(
        torch.zeros(3, 9),
        torch.tensor([0, 0, 0]),
        _vocab(3, 3),
        verb_logits=vl[:3],
        noun_logits=nl[:3],
        verb_labels=torch.tensor([0, 1, 2]),
        noun_labels=torch.tensor([0, 1, 2]),
    )
    assert (
        m["action_top1"] == (1 / 3) * 100 and m["action_top5"] == (2 / 3) * 100 and m["verb_top1"] == m["action_top1"]
    )


@pytest.mark.parametrize("nv,nn,k", [(7, 9, 5), (4, 3, 12), (6, 5, 1)])
def test_epic_action_ranks_equal_a_brute_force_ranking(nv, nn, k):
    g = torch.Generator().manual_seed(nv * 100 + nn)
    vs, ns = torch.randn(6, nv, generator=g) * 2, torch.randn(6, nn, generator=g) * 2
    rv, rn = epic_action_ranks(vs, ns, k)
    assert rv.shape == rn.shape == (6, min(k, nv * nn))
    for row in range(6):
        pv, pn = vs[row].double().softmax(0).tolist(), ns[row].double().softmax(0).tolist()
        brute = sorted(((pv[a] * pn[b], a, b) for a in range(nv) for b in range(nn)), reverse=True)
        assert list(zip(rv[row].tolist(), rn[row].tolist())) == [(a, b) for _, a, b in brute[:k]]


def test_mean_class_accuracy_and_topk_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])  # classes 3 and 4 are absent from the labels
    pred = torch.tensor([0, 0, 1, 1, 3, 2, 2, 0, 2])  # ... 3 is predicted once, which costs class 1
    want = (2 / 3 + 1 / 2 + 3 / 4) / 3 * 100
    assert mean_class_accuracy(pred, labels, 5) == pytest.approx(want, rel=1e-12)
    assert mean_class_accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 5) == 0.0
    # the label at rank 1, 2, 3, 4 and 1 of its row
    scores = torch.tensor(
        [[0.9, 0.1, 0.0, 0.0], [0.5, 0.4, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.0, 0.0, 0.1, 0.9]]
    )
    y = torch.tensor([0, 1, 1, 3, 3])
    assert [topk_accuracy(scores, y, k) for k in (1, 2, 3, 4, 5)] == pytest.approx([40, 60, 80, 100, 100], rel=1e-12)
    m = classification_metrics(scores, y, [f"c{i}" for i in range(4)])
    assert m["top1"] == pytest.approx(40) and m["top5"] == 100.0 and m["videos"] == 5
    # per class: 0 right (1/1), 1 wrong twice (0/2), 3 right once of two (1/2)
    assert m["mean_class_acc"] == pytest.approx((1 + 0 + 0.5) / 3 * 100, rel=1e-12)


def test_group_metrics_over_their_masks():
    # verbs right on rows 0 1 2 4, nouns right on rows 0 2 3 4: actions (both) right on rows 0 2 4
    vl = _logp(*[[0.6, 0.3, 0.1]] * 6)
    nl = _logp(*[[0.1, 0.7, 0.2]] * 6)
    verbs = torch.tensor([0, 0, 0, 2, 0, 1])
    nouns = torch.tensor([1, 0, 1, 1, 1, 2])
    unseen = [True, True, False, True, True, False]  # rows 0 1 3 4: actions right on 0 4 -> 2/4
    tail = [False, True, True, True, False, True]  # rows 1 2 3 5: verbs right on 1 2 -> 2/4
    tail_noun = [False, False, False, False, False, True]  # row 5: noun wrong -> 0
    none = [False] * 6
    m = classification_metrics(
        torch.zeros(6, 9),
        verbs * 3 + nouns,
        _vocab(3, 3),
        verb_logits=vl,
        noun_logits=nl,
        verb_labels=verbs,
        noun_labels=nouns,
        groups={
            "unseen_action_top1": unseen,
            "tail_verb_top1": tail,
            "tail_noun_top1": tail_noun,
            "unseen_verb_top1": none,
        },
    )
    assert (
        m["action_top1"] == 50.0
        and m["verb_top1"] == pytest.approx(400 / 6)
        and m["noun_top1"] == pytest.approx(400 / 6)
    )
    assert (m["unseen_action_top1"], m["unseen_action_videos"]) == (50.0, 4)
    assert (m["tail_verb_top1"], m["tail_verb_videos"]) == (50.0, 4)
    assert (m["tail_noun_top1"], m["tail_noun_videos"]) == (0.0, 1)
    assert "unseen_verb_top1" not in m and "unseen_verb_videos" not in m  # an empty group has no figure
    # an action head: a group's verb / noun is the verb / noun of the predicted action
    vocab = _vocab(2, 2)  # actions: (0,0) (0,1) (1,0) (1,1)
    logits = torch.eye(4)[[0, 1, 3, 2]]  # predicted actions 0 1 3 2
    labels = torch.tensor([0, 0, 1, 2])  # right, same verb, same noun, right
    m = classification_metrics(
        logits, labels, vocab, groups={"tail_verb_top1": [True] * 4, "tail_noun_top1": [True] * 4}
    )
    assert (m["top1"], m["verb_acc"], m["noun_acc"]) == (50.0, 75.0, 75.0)
    assert m["tail_verb_top1"] == 75.0 and m["tail_noun_top1"] == 75.0


# --------------------------------------------------------------------------------------------------------------
# CLI end to end


def _tiny(root) -> list[str]:
    return [*tiny_args(root), "train.epochs=1", "model.heads=verb_noun"]


def test_cli_train_and_eval_epic(epic, tmp_path, capsys):
    root, facts, before = epic
    run = tmp_path / "run"
    assert main(["train", str(STAGE1), *_tiny(root), f"out={run}", "--quiet"]) == 0
    s = json.loads((run / "summary.json").read_text())
    keys = ["verb_top1", "verb_top5", "noun_top1", "noun_top5", "action_top1", "action_top5"]
    keys += ["unseen_action_top1", "tail_action_top1"]
    assert all(isinstance(s[k], float) for k in keys), {k: s.get(k) for k in keys}  # values: checked by eval below
    assert s["selected_by"] == "action_top1" and s["videos"] == len(facts["segments"]["validation"])
    unseen = sum(r["participant"] in facts["unseen"] for r in facts["segments"]["validation"])
    assert s["unseen_action_videos"] == unseen
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["epoch"] == s["best_epoch"] and r["videos"] == s["videos"]
    for k in keys:
        assert r[k] == pytest.approx(s[k], abs=1e-9), k
    assert _files(root) == before  # the run wrote nothing into the dataset
    # the test split's submission: every narration id, the scores of every verb and noun, the supervision levels
    csv_path = root / "annotations" / "EPIC_100_test_timestamps.csv"
    out = tmp_path / "sub.json"
    assert main(["predict", str(run), "--epic-test", str(csv_path), "--out", str(out)]) == 2  # --sls is required
    assert "--sls" in capsys.readouterr().err and not out.exists()
    assert main(["predict", str(run), "--epic-test", str(csv_path), "--out", str(out), "--sls", "1,3,3"]) == 0
    sub = json.loads(out.read_text())
    assert {k: sub[k] for k in ("version", "challenge", "sls_pt", "sls_tl", "sls_td")} == {
        "version": "0.2",
        "challenge": "action_recognition",
        "sls_pt": 1,
        "sls_tl": 3,
        "sls_td": 3,
    }
    assert sorted(sub["results"]) == sorted(facts["test_ids"])
    for r in sub["results"].values():
        assert sorted(r["verb"], key=int) == [str(i) for i in range(len(facts["verbs"]))]
        assert sorted(r["noun"], key=int) == [str(i) for i in range(len(facts["nouns"]))]
    before_sub = out.read_bytes()
    assert main(["predict", str(run), "--epic-test", str(csv_path), "--out", str(out), "--sls", "1,3,3"]) == 2
    assert out.read_bytes() == before_sub  # an existing submission is never overwritten
    # a narration id given twice would lose one of its scores: refused, naming both lines
    lines = csv_path.read_text().splitlines(keepends=True)
    twice = tmp_path / "twice.csv"
    twice.write_text("".join([*lines, lines[1]]))
    capsys.readouterr()
    assert (
        main(["predict", str(run), "--epic-test", str(twice), "--out", str(tmp_path / "t.json"), "--sls", "1,3,3"]) == 2
    )
    nid = lines[1].split(",")[0]
    assert f"narration id {nid} is on line 2 and again on line {len(lines) + 1}" in capsys.readouterr().err


def test_cli_train_egtea_split_2(egtea, tmp_path, capsys):
    root, facts = egtea
    run = tmp_path / "run"
    assert main(["train", str(STAGE1), *_tiny(root), "data.split=2", f"out={run}", "--quiet"]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert isinstance(s["best_top1"], float) and isinstance(s["mean_class_acc"], float)
    assert s["split"] == "EGTEA split 2" and s["selected_by"] == "action_top1"
    # test_split2.txt lists the missing clip: one test clip fewer
    assert s["videos"] == facts["split_counts"][2]["test"] - 1
    cfg = load_config(run / "config.yaml")
    assert cfg.data.egtea.split == 2
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["top1"] == pytest.approx(s["best_top1"]) and r["action_top1"] == pytest.approx(s["action_top1"])
    # an EGTEA run cannot make an EPIC submission; a metric that is not one, or needs heads the run lacks
    sub = ["predict", str(run), "--epic-test", "EPIC_100_test_timestamps.csv", "--out", str(tmp_path / "s.json")]
    assert main([*sub, "--sls", "1,3,3"]) == 2 and "needs a run trained on epic100" in capsys.readouterr().err
    assert main(["train", str(STAGE1), *_tiny(root), "train.select_metric=bogus", f"out={tmp_path / 'b'}"]) == 2
    assert "is not a metric fpar computes" in capsys.readouterr().err
    bad = ["train", str(STAGE1), *_tiny(root), "model.heads=action", "train.select_metric=action_top1"]
    assert main([*bad, f"out={tmp_path / 'c'}"]) == 2 and "needs verb and noun heads" in capsys.readouterr().err


def test_cli_data_check(egtea, epic, capsys):
    eg_root, eg = egtea
    ep_root, ep, _ = epic
    capsys.readouterr()
    assert main(["data", "check", str(ep_root), "--format", "epic100", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["format"] == "epic100"
    assert r["split_counts"] == {k: len(v) for k, v in ep["segments"].items()}
    assert r["verbs"] == ep["verbs"] and r["nouns"] == ep["nouns"]
    assert main(["data", "check", str(eg_root), "--format", "egtea", "--split", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["format"] == "egtea" and r["split_counts"] == {
        "train": eg["split_counts"][3]["train"] - 1,
        "test": eg["split_counts"][3]["test"],
    }
    (p,) = [p for p in r["problems"] if p["kind"] == "missing_clip"]
    assert p["line"] == _split_lines(3, "train").index(1) + 1 == 2
    assert r["splits"]["description"] == "EGTEA split 3"
    assert not math.isnan(r["frames"]["mean"])


# --------------------------------------------------------------------------------------------------------------
# fpar prepare --format egtea | epic100


def test_prepare_egtea_makes_a_root_the_reader_reads(egtea, tmp_path):
    """Frames and warp flow of every clip that exists; the output is an EGTEA root whose records use them."""
    from fpar.video.prepare import prepare

    root, facts = egtea
    out = tmp_path / "prepared"
    s = prepare(str(root), out, layout="egtea", flow_method="dis", short_side=None, progress=False)
    assert not s["failed"] and len(s["processed"]) == len(facts["frames"])
    assert any(facts["missing_clip"] in n for n in s["notes"])
    _, m = _read(out, "data.format=egtea")
    by = {v.instance: v for v in m.videos}
    for clip, n in facts["frames"].items():
        v = by[clip]
        assert len(v.rgb) == n and v.num_flows == n - 1 and v.flow_scale == 1.0
        assert v.rgb[0].endswith(f"frames/{clip}/frame_0000000001.jpg") and v.flow_x[0].endswith(".png")
    assert not by[facts["missing_clip"]].usable
    # a second call skips everything (same sources, same settings, outputs complete)
    again = prepare(str(root), out, layout="egtea", flow_method="dis", short_side=None, progress=False)
    assert again["processed"] == [] and len(again["skipped"]) == len(facts["frames"])


def test_prepare_epic_flow_for_videos_without_any(epic, tmp_path):
    """Flow only for the video that has RGB and no flow; with data.epic100.flow_root its segments get it at full rate
    and in fpar's encoding, and the dataset folder is not written to."""
    from fpar.video.prepare import prepare

    root, facts, files = epic
    out = tmp_path / "flow"
    s = prepare(str(root), out, layout="epic100", flow_method="dis", short_side=None, progress=False)
    no_flow = [vid for vid, d in facts["videos"].items() if d["flow"] is None]
    assert [k.split("/")[-1] for k in s["processed"]] == no_flow and not s["failed"]
    assert _files(root) == files  # nothing written into the dataset
    _, m = _read(root, "data.format=epic100", f"data.epic100.flow_root={out}")
    segs = [v for v in m.videos if v.meta["video"] == no_flow[0]]
    assert segs
    n = facts["videos"][no_flow[0]]["frames"]
    for v in segs:
        first, last = v.meta["start_frame"], min(v.meta["stop_frame"], n - 1)
        assert v.flow_stride == 1 and v.flow_scale == 1.0 and v.meta["flow_frames"] == [first, last]
        assert v.flow_x[0].endswith(f"u/frame_{first:010d}.png")
    assert not [p for p in m.problems if p.kind == "missing_modality" and no_flow[0] in p.path]
