"""EPIC-KITCHENS-100 action-recognition submissions: `fpar predict RUN --epic-test CSV --out FILE.json`.

The test split's labels are withheld; its segments (``EPIC_100_test_timestamps.csv``) are scored by a run trained
with verb and noun heads, and written in the challenge's JSON format: ``version``, ``challenge``, the three
supervision levels (``sls_pt``, ``sls_tl``, ``sls_td``) and ``results``: per ``narration_id`` the score of every verb
and every noun (the server ranks actions from them as `fpar.engine.metrics.epic_action_ranks` does).
"""

from __future__ import annotations

from pathlib import Path

from ..data.readers.epic100 import read_test_segments
from ..engine.run import open_run
from ..engine.trainer import make_loader, pick_device, predict_all
from ..errors import FparError
from ..utils import atomic_write_json, refuse_existing

SUBMISSION_VERSION = "0.2"  # the EPIC-KITCHENS-100 action-recognition format
CHALLENGE = "action_recognition"


def parse_sls(text: str | None) -> tuple[int, int, int]:
    """``"PT,TL,TD"`` -> three ints in 0..5 (EPIC's supervision levels: pretraining, training labels, training data)."""
    if not text:
        raise FparError(
            "give --sls PT,TL,TD: the supervision levels the EPIC-KITCHENS challenge asks every submission to state "
            "(pretraining, training labels, training data; 0-5 each, see the challenge's rules)"
        )
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and 0 <= int(p) <= 5 for p in parts):
        raise FparError(f"--sls {text!r}: give three levels 0-5 separated by commas, e.g. --sls 1,3,3")
    return int(parts[0]), int(parts[1]), int(parts[2])


def epic_submission(
    run: str | Path, test_csv: str | Path, out: str | Path, *, sls: str | None, root: str | None = None
) -> dict:
    """Score the segments of ``test_csv`` with ``run`` and write the submission JSON to ``out``.

    Args:
        root: the EPIC-KITCHENS frames folder (default: the run's ``data.root``).
    Returns:
        ``{"out", "segments", "verbs", "nouns"}``.
    """
    pt, tl, td = parse_sls(sls)
    out = refuse_existing(out, "--out")
    r = open_run(run)
    if not r.vocab.has_verb_noun or r.cfg.model.heads != "verb_noun":
        raise FparError(
            f"{run} has no verb and noun heads (model.heads={r.cfg.model.heads}); an EPIC submission needs verb and "
            "noun scores: train with model.heads=verb_noun"
        )
    fmt = r.ckpt.get("data_format")
    if fmt != "epic100":
        raise FparError(
            f"{run} was trained on {fmt} data; an EPIC-KITCHENS-100 submission needs a run trained on epic100"
        )
    manifest = read_test_segments(test_csv, root or r.cfg.data.root, r.cfg.data.epic100)
    if not manifest.videos:
        raise FparError(f"{test_csv} lists no segments")
    ds = r.dataset(manifest, list(range(len(manifest.videos))))
    if len(ds) != len(manifest.videos):
        raise FparError(
            f"{len(manifest.videos) - len(ds)} test segment(s) lack the inputs {', '.join(ds.modalities)}; a "
            "submission needs every narration id"
        )
    device = pick_device(r.cfg.train.device)
    res = predict_all(r.model.to(device), make_loader(ds, r.cfg, train=False), r.cfg, device, desc="epic-test")
    if "verb_logits" not in res:
        raise FparError(f"{run}: the model returned no verb / noun scores")
    results = {}
    for i, vl, nl in zip(res["index"].tolist(), res["verb_logits"], res["noun_logits"]):
        nid = manifest.videos[i].meta["narration_id"]
        results[nid] = {
            "verb": {str(k): round(float(x), 6) for k, x in enumerate(vl)},
            "noun": {str(k): round(float(x), 6) for k, x in enumerate(nl)},
        }
    sub = {
        "version": SUBMISSION_VERSION,
        "challenge": CHALLENGE,
        "sls_pt": pt,
        "sls_tl": tl,
        "sls_td": td,
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, sub)
    return {"out": str(out), "segments": len(results), "verbs": len(r.vocab.verbs), "nouns": len(r.vocab.nouns)}
