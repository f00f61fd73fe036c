"""Training memory at the paper's 25 frames, counted on the CPU: one step of Ego-RNN (ResNet-34, whole backbone
trainable, MS head at conv4, 224 px) at batch 32, with and without the memory options.

    python benchmarks/bench_memory.py [--batch 32] [--frames 25] [--size 224] [--json benchmarks/results/memory.json]

What is counted (bytes, no GPU needed):
* the tensors autograd saves for backward, caught by the pack hook of ``torch.autograd.graph.saved_tensors_hooks``
  and deduplicated by storage, for a forward of ONE clip; every saved tensor of this model scales with the batch
  (per-frame trunk, per-clip ConvLSTM), so the batch figure is that times ``--batch``;
* with ``train.checkpoint=true``, the recomputation's peak in backward: twice the saved tensors of one chunk of
  ``checkpoint_chunk`` frames through the trunk (its activations, and at most as much again for their gradients);
* parameters, their gradients and Adam's two moments (fp32).
Variants: fp32, bf16 autocast, checkpointing, both. The issue's target: both options on, at most 14 GB (a 16 GB GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fpar.config import load_config
from fpar.engine.build import build_model, forward_batch
from fpar.engine.stages import apply_trainable, set_train_mode
from fpar.models.backbone import ResNetTrunk
from fpar.models.heads import total_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit_json  # noqa: E402  (benchmarks/common.py)

STAGE2 = Path(__file__).resolve().parents[1] / "configs" / "ego_rnn_stage2.yaml"
GB = 1e9


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves while ``fn()`` runs."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(
        STAGE2,
        [
            "model.pretrained=none",
            f"data.frames={a.frames}",
            f"data.input_size={a.size}",
            "model.ego_rnn.ms.enabled=true",
            "model.ego_rnn.ms.layer=conv4",
            "train.trainable=[.]",
            "init.from=null",
        ],
    )
    model, _ = build_model(cfg, [f"c{i}" for i in range(61)])
    apply_trainable(model, ["."])
    set_train_mode(model, [])
    trunk = next(m for m in model.modules() if isinstance(m, ResNetTrunk))
    s = a.size // 16
    batch = {
        "rgb": torch.randn(1, a.frames, 3, a.size, a.size),
        "mmaps": torch.zeros(1, a.frames, a.size, a.size, dtype=torch.uint8),
        "label": torch.tensor([0]),
    }
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state = n_params * 4 * 4  # weights, gradients, Adam's exp_avg and exp_avg_sq, fp32
    rows = {}
    for name, amp, ckpt in (("fp32", False, False), ("bf16", True, False), ("checkpoint", False, True),
                            ("bf16+checkpoint", True, True)):  # fmt: skip
        trunk.checkpoint = ckpt

        def step(amp=amp):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = forward_batch(model, cfg, batch, train=True)
                out.float()
                total_loss(model.losses(out, batch))

        per_clip = saved_bytes(step)
        recompute = 0
        if ckpt:  # the backward peak: one chunk of frames through the trunk, its activations saved
            trunk.checkpoint = False
            chunk = torch.randn(min(trunk.checkpoint_chunk, a.frames * a.batch), 3, a.size, a.size)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                # its activations and, while backward runs through it, their gradients: at most as much again
                recompute = 2 * saved_bytes(lambda chunk=chunk: trunk.forward_features(chunk))
        activations = per_clip * a.batch
        total = activations + recompute + state
        rows[name] = {
            "saved_for_backward_gb": round(activations / GB, 2),
            "recompute_peak_gb": round(recompute / GB, 2),
            "params_grads_adam_gb": round(state / GB, 2),
            "total_gb": round(total / GB, 2),
        }
        print(name, json.dumps(rows[name]))
    s = {"batch": a.batch, "frames": a.frames, "size": a.size, "trainable_params": n_params, "ms_map": s, **rows}
    s["target_14gb_met"] = rows["bf16+checkpoint"]["total_gb"] <= 14.0
    emit_json(s, a.json)


if __name__ == "__main__":
    main()
