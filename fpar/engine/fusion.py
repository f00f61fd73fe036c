"""Late fusion of two trained streams (the untrained score-averaging baseline of Ego-RNN's Table 1)."""

from __future__ import annotations

import torch

from ..errors import FparError
from ..models.two_stream import late_fusion
from .metrics import classification_metrics
from .run import open_run
from .trainer import make_loader, pick_device, predict


def late_fusion_eval(rgb_run: str, flow_run: str, *, weight: float = 0.5, data_root: str | None = None) -> dict:
    """Evaluate ``weight * flow + (1 - weight) * rgb`` logits on the test split of the RGB run.

    The first run must read RGB frames and the second flow (the arguments in the wrong order are refused, naming
    which is which); both must be trained on the same classes; only videos that both streams can read are scored.
    Returns the metrics of the RGB stream, the flow stream and the fusion on the same videos.
    """
    if not 0 <= weight <= 1:
        raise FparError(f"--weight must be in [0, 1], got {weight}")
    runs = {"rgb": open_run(rgb_run), "flow": open_run(flow_run)}
    for slot, path in (("rgb", rgb_run), ("flow", flow_run)):
        reads = runs[slot].spec.inputs(runs[slot].cfg, False)
        if tuple(reads) != (slot,):
            raise FparError(
                f"{path} is a run of '{runs[slot].spec.name}', which reads {'+'.join(reads)}: fpar fuse takes the "
                f"RGB run first and the flow run second"
            )
    vocab = runs["rgb"].vocab
    if runs["flow"].classes != runs["rgb"].classes:
        raise FparError(f"{rgb_run} and {flow_run} were trained on different classes; fuse runs of one dataset")
    logits: dict[str, dict[int, torch.Tensor]] = {}
    labels: dict[int, int] = {}
    manifest = runs["rgb"].manifest(data_root)
    test = runs["rgb"].test_indices(manifest)
    for name, r in runs.items():
        ds = r.dataset(manifest, test)
        device = pick_device(r.cfg.train.device)
        out, y, _ = predict(r.model.to(device), make_loader(ds, r.cfg, train=False), r.cfg, device)
        logits[name] = dict(zip(ds.indices, out))
        labels.update(zip(ds.indices, y.tolist()))
    common = sorted(set(logits["rgb"]) & set(logits["flow"]))
    if not common:
        raise FparError("the two runs share no test video")
    y = torch.tensor([labels[i] for i in common])
    rl = torch.stack([logits["rgb"][i] for i in common])
    fl = torch.stack([logits["flow"][i] for i in common])
    res = {}
    for name, lg in (("rgb", rl), ("flow", fl), ("fusion", late_fusion(rl, fl, weight))):
        m = classification_metrics(lg, y, vocab)
        m.pop("confusion")
        res[name] = m
    return {"weight": weight, "split": runs["rgb"].split_name(manifest), "videos": len(common), **res}
