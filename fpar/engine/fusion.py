"""Late fusion of two trained streams (the untrained score-averaging baseline of Ego-RNN's Table 1)."""

from __future__ import annotations

import torch

from ..config import from_dict
from ..data.dataset import ClipDataset
from ..data.layout import discover
from ..data.synth import motion_pairs
from ..errors import FparError
from ..models.two_stream import late_fusion
from .build import modalities, model_from_checkpoint
from .checkpoint import load_checkpoint
from .metrics import classification_metrics
from .trainer import make_loader, pick_device, predict


def late_fusion_eval(rgb_run: str, flow_run: str, *, weight: float = 0.5, data_root: str | None = None) -> dict:
    """Evaluate ``weight * flow + (1 - weight) * rgb`` logits on the test subjects of the RGB run.

    Both runs must be trained on the same classes; only videos that both streams can read are scored.
    Returns the metrics of the RGB stream, the flow stream and the fusion on the same videos.
    """
    ck = {k: load_checkpoint(p) for k, p in (("rgb", rgb_run), ("flow", flow_run))}
    if list(ck["rgb"]["classes"]) != list(ck["flow"]["classes"]):
        raise FparError(f"{rgb_run} and {flow_run} were trained on different classes; fuse runs of one dataset")
    if not 0 <= weight <= 1:
        raise FparError(f"--weight must be in [0, 1], got {weight}")
    logits: dict[str, dict[int, torch.Tensor]] = {}
    labels: dict[int, int] = {}
    classes = list(ck["rgb"]["classes"])
    subjects = None
    for name, c in ck.items():
        cfg = from_dict(c["config"], c["path"])
        if data_root:
            cfg.data.root = data_root
        subjects = subjects or cfg.data.test_subjects
        manifest = discover(cfg.data.root, frames_dir=cfg.data.frames_dir)
        if list(manifest.classes) != classes:
            raise FparError(f"{cfg.data.root} has other classes than {c['path']} was trained on")
        ds = ClipDataset(manifest, manifest.select(subjects), cfg.data, modalities=modalities(cfg), train=False)
        device = pick_device(cfg.train.device)
        model = model_from_checkpoint(c).to(device)
        out, y, _ = predict(model, make_loader(ds, cfg, train=False), cfg, device)
        logits[name] = dict(zip(ds.indices, out))
        labels.update(zip(ds.indices, y.tolist()))
    common = sorted(set(logits["rgb"]) & set(logits["flow"]))
    if not common:
        raise FparError("the two runs share no test video")
    y = torch.tensor([labels[i] for i in common])
    r = torch.stack([logits["rgb"][i] for i in common])
    f = torch.stack([logits["flow"][i] for i in common])
    pairs = [c for p in motion_pairs(classes) for c in p]
    res = {}
    for name, lg in (("rgb", r), ("flow", f), ("fusion", late_fusion(r, f, weight))):
        m = classification_metrics(lg, y, classes, subset=pairs)
        m.pop("confusion")
        res[name] = m
    return {"weight": weight, "subjects": subjects, "videos": len(common), **res}
