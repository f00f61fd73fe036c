"""Export a trained single-stream model for deployment: ONNX (onnxruntime, mobile / wearable runtimes) or a
``torch.export`` program (``.pt2``).

The exported graph is the inference path only: it returns the logits (B, classes) and nothing else (no MS head, no
static-dynamic discriminator, no attention maps; dropout is off). What a family exports (the module, its one input
and how to feed it) is its spec's ``export`` (`fpar.registry.ExportPlan`); for the built-in families:

* Ego-RNN (every variant: CAM or not, MS, discriminator, representation flow): ``clip`` (B, T, 3, S, S), T RGB frames
  ImageNet-normalised after the test transform; the ConvLSTM loop is unrolled for T steps, so T is fixed
  (``data.frames`` of the run unless ``frames`` is given) and so is S (``data.input_size``);
* flow_resnet: ``flow`` (B, 2L, S, S), one stack of L warp flows, channels x0, y0, x1, y1, ..., each flow image
  (8-bit grey, bound 20 px) scaled to [0, 1] and normalised with the flow mean / std.

The batch axis B is dynamic (checked at B = 1 and B = 2); if a backend cannot keep it dynamic the export falls back to
a fixed B = 1 and says so (``dynamic_batch`` false). Two-stream models are not exported (two inputs with their own
preprocessing; the spec's ``export_refusal`` says so).

Every export is checked against the PyTorch model on random inputs before it is moved into place (the file appears
only when the check passes), and a JSON sidecar ``<file>.json`` records what an app needs to feed it: classes,
input shape and layout, normalisation and the preprocessing recipe.

ONNX uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): torch >= 2.9 defaults to the
torch.export-based exporter, which needs the separate ``onnxscript`` package; the TorchScript exporter needs nothing
beyond ``fpar[export]`` (onnx, onnxruntime) and exports these models exactly.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from fpar.errors import FparError

__all__ = ["export_model", "FORMATS", "SUFFIX"]

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torch-export")
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}
RTOL = 1e-4  # parity: max |exported - eager| <= RTOL * max(1, max |eager logit|)
INSTALL_HINT = "pip install 'fpar[export]'  (or: pip install onnx onnxruntime)"


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise FparError(f"ONNX export needs the optional packages onnx and onnxruntime ({e}); {INSTALL_HINT}") from None
    return onnx, onnxruntime


def _parity(run, wrapper, inputs) -> tuple[float, float]:
    """max |run(x) - wrapper(x)| over ``inputs`` and the tolerance it must stay within."""
    import torch

    diff, scale = 0.0, 1.0
    with torch.no_grad():
        for x in inputs:
            ref = wrapper(x)
            got = torch.as_tensor(run(x)).to(ref.dtype)
            if got.shape != ref.shape:
                raise FparError(f"the exported model returned shape {tuple(got.shape)} instead of {tuple(ref.shape)}")
            diff = max(diff, float((got - ref).abs().max()))
            scale = max(scale, float(ref.abs().max()))
    return diff, RTOL * scale


def _export_onnx(wrapper, sample, tmp: Path, input_name: str, *, dynamic: bool, opset: int):
    import torch

    onnx, ort = _require_onnx()
    with warnings.catch_warnings():
        # the TorchScript exporter warns that it is the legacy one, and the tracer about the models' shape checks
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)  # strided slices
        torch.onnx.export(
            wrapper,
            (sample,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=["logits"],
            dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}} if dynamic else None,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(tmp))
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(tmp), so, providers=["CPUExecutionProvider"])

    def run(x):
        return torch.from_numpy(sess.run(["logits"], {input_name: x.numpy()})[0])

    return run, f"onnxruntime {ort.__version__}"


def _export_torch(wrapper, sample, tmp: Path, input_name: str, *, dynamic: bool):
    import torch

    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
    with torch.no_grad():
        ep = torch.export.export(wrapper, (sample,), dynamic_shapes=shapes)
    torch.export.save(ep, str(tmp))
    loaded = torch.export.load(str(tmp)).module()  # the check runs the saved file, not the in-memory program
    return (lambda x: loaded(x)), f"torch.export.load (torch {torch.__version__})"


def export_model(
    run_or_checkpoint: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    format: str = "onnx",
    frames: int | None = None,
    opset: int = 17,
) -> dict[str, Any]:
    """Export a trained run (logits only) of any family whose spec exports, and check it reproduces the PyTorch model.

    Args:
        run_or_checkpoint: a run folder (its ``best.pt``) or a checkpoint file.
        out: output file; default next to the checkpoint (``runs/x/best.onnx`` / ``best.pt2``).
        format: ``"onnx"`` (needs ``fpar[export]``) or ``"torch-export"`` (``torch.export`` program, ``.pt2``).
        frames: clip models: the clip length T to unroll for (default: the run's ``data.frames``).
        opset: ONNX opset (>= 17).

    Returns:
        ``{"path", "format", "max_abs_diff", "tolerance", "input_shape" ([1, T, 3, S, S] or [1, 2L, S, S]),
        "input_name", "dynamic_batch", "sidecar", "checked_with"}``.

    Raises:
        FparError: a family that does not export (two-stream), unknown format, missing onnx / onnxruntime, or an
        export that does not reproduce the model within the tolerance (nothing is written then).
    """
    import torch

    from fpar.engine.run import open_run
    from fpar.utils import atomic_write_json, refuse_existing
    from fpar.version import __version__

    if format not in FORMATS:
        raise FparError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "onnx":
        _require_onnx()  # fail before loading anything
        if opset < 17:
            raise FparError(f"opset={opset}: ONNX export needs opset 17 or newer")
    opened = open_run(run_or_checkpoint)
    ckpt_path, cfg, spec = opened.path, opened.cfg, opened.spec
    if spec.export is None:
        reason = spec.export_refusal(cfg) if spec.export_refusal is not None else "its family declares no export"
        raise FparError(f"{ckpt_path} is a {spec.name} model: {reason}")
    plan = spec.export(opened.model, cfg, frames)
    shape, input_name, layout = list(plan.shape), plan.input_name, plan.layout

    out_path = Path(out) if out is not None else ckpt_path.with_suffix(SUFFIX[format])
    if out_path.is_dir():
        raise FparError(f"--out {out_path} is a folder; give a file name, e.g. {out_path / ('model' + SUFFIX[format])}")
    refuse_existing(out_path, "--out")
    refuse_existing(out_path.with_name(out_path.name + ".json"), "--out")  # the sidecar
    tmp = out_path.parent / f".{out_path.stem}.tmp-{os.getpid()}{out_path.suffix}"
    try:  # before minutes of tracing: can the file be written at all?
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
    except OSError as e:
        raise FparError(f"cannot write {out_path} ({e.strerror}); choose another --out") from None

    wrapper = plan.module
    gen = torch.Generator().manual_seed(0)
    sample2 = torch.randn([2, *shape[1:]], generator=gen)  # B = 2: a B = 1 trace would specialise the batch to 1
    checks = [torch.randn(shape, generator=gen), torch.randn([2, *shape[1:]], generator=gen)]

    result: dict[str, Any] | None = None
    try:
        for dynamic in (True, False):
            sample = sample2 if dynamic else checks[0]
            inputs = checks if dynamic else checks[:1]
            try:
                if format == "onnx":
                    run, checked_with = _export_onnx(wrapper, sample, tmp, input_name, dynamic=dynamic, opset=opset)
                else:
                    run, checked_with = _export_torch(wrapper, sample, tmp, input_name, dynamic=dynamic)
                diff, tol = _parity(run, wrapper, inputs)
            except FparError:
                raise
            except Exception as e:
                if not dynamic:
                    raise FparError(f"{format} export of {ckpt_path} failed: {type(e).__name__}: {e}") from e
                log.warning("%s export with a dynamic batch failed (%s: %s); exporting batch 1", format, type(e), e)
                continue
            if diff <= tol:
                result = {"dynamic": dynamic, "diff": diff, "tol": tol, "checked_with": checked_with}
                break
            if not dynamic:
                raise FparError(
                    f"the {format} export of {ckpt_path} does not reproduce the PyTorch model: max |diff| {diff:.3g} "
                    f"> {tol:.3g}; nothing was written"
                )
            log.warning("%s export with a dynamic batch differs by %.3g; exporting batch 1", format, diff)
        assert result is not None
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)

    norm = opened.normalisation
    sidecar = out_path.with_name(out_path.name + ".json")
    meta = {
        "fpar_version": __version__,
        "torch_version": torch.__version__,
        "format": format,
        "file": out_path.name,
        "model": spec.name,
        "checkpoint": str(ckpt_path),
        "epoch": opened.ckpt.get("epoch"),
        "classes": opened.classes,
        "input": {
            "name": input_name,
            "shape": shape,
            "dynamic_batch": result["dynamic"],
            "dtype": "float32",
            "layout": layout,
        },
        "output": {
            "name": "logits",
            "shape": [1, len(opened.classes)],
            "note": "softmax over axis 1 for probabilities",
        },
        "normalisation": norm,
        "preprocessing": {
            "sampling": f"uniform_indices(N, T, method={cfg.data.sampling!r}) (seed: frame k = floor(k * N / T))",
            "scale_size": cfg.data.scale_size,
            "input_size": cfg.data.input_size,
            "crop": "resize the shorter side to scale_size, centre crop input_size x input_size",
            **plan.preprocessing,
        },
        "parity": {"max_abs_diff": result["diff"], "tolerance": result["tol"], "checked_with": result["checked_with"]},
    }
    if format == "onnx":
        meta["opset"] = opset
    atomic_write_json(sidecar, meta)
    return {
        "path": str(out_path),
        "format": format,
        "max_abs_diff": result["diff"],
        "tolerance": result["tol"],
        "input_shape": shape,
        "input_name": input_name,
        "dynamic_batch": result["dynamic"],
        "sidecar": str(sidecar),
        "checked_with": result["checked_with"],
    }
