"""`open_run`: the one way from a run folder (or checkpoint) to what it needs at inference time.

Used by `fpar eval`, `fpar fuse`, `fpar cam`, `fpar predict`, `fpar export`, ``init.from``, the streams of a
multi-stream model and `fpar.load_run`. Run folders and checkpoints of fpar 0.1.0 open too: their config keys are
read through the aliases of `fpar.config`, and their vocabulary is rebuilt from the class names by the reader.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..config import ExperimentConfig, from_dict
from ..data.dataset import ClipDataset
from ..data.manifest import Manifest, Vocabulary
from ..data.readers import block_of, read_dataset, reader_of
from ..errors import FparError
from ..registry import ModelSpec, model_spec, reader_spec
from .build import build_model, modalities
from .checkpoint import load_checkpoint

LEGACY_FORMAT = "gtea61"  # fpar 0.1.0 read GTEA61 only: its checkpoints carry class names, no vocabulary


@dataclass
class OpenRun:
    """A trained run, opened: its resolved config, vocabulary, model spec and (unless asked not to) its model in
    eval mode on the CPU. ``ckpt`` is the raw checkpoint dict (``path``, ``epoch``, ``metrics``, ...)."""

    path: Path
    ckpt: dict[str, Any]
    cfg: ExperimentConfig
    vocab: Vocabulary
    spec: ModelSpec
    model: nn.Module | None

    @property
    def classes(self) -> list[str]:
        return list(self.vocab.actions)

    @property
    def normalisation(self) -> dict:
        return dict(self.ckpt.get("normalisation") or {})

    def for_inference(self) -> nn.Module:
        """The model made faster for inference, in place: BatchNorm folded into the convs where exact
        (`fpar.models.backbone.fold_batchnorm`) and conv weights channels_last. The outputs agree with the
        unfolded model's to float rounding; do not train or save the model afterwards."""
        from ..models.backbone import fold_batchnorm
        from .build import to_channels_last

        if self.model is None:
            raise ValueError("the run was opened without its model (build=False)")
        fold_batchnorm(self.model)
        return to_channels_last(self.model)

    def info(self) -> dict[str, Any]:
        """The ``info`` dict of `fpar.load_run` (classes, config as a dict, input size, normalisation, ...)."""
        keys = ("classes", "config", "input_size", "normalisation", "epoch", "metrics", "path")
        return {**{k: self.ckpt.get(k) for k in keys}, "vocabulary": self.vocab.to_dict()}

    def manifest(self, data_root: str | None = None) -> Manifest:
        """The run's dataset (or the one at ``data_root``) through its reader, checked to have the run's classes."""
        data = copy.deepcopy(self.cfg.data)
        if data_root:
            data.root = data_root
        m = read_dataset(data)
        if list(m.classes) != self.classes:
            raise FparError(
                f"{data.root} has {len(m.classes)} classes {_differ(m.classes, self.classes)} than the "
                f"{len(self.classes)} that {self.path} was trained on; give the dataset it was trained on (--data)"
            )
        return m

    def test_indices(self, manifest: Manifest) -> list[int]:
        """The videos of the run's test split (the reader's split as configured)."""
        reader = reader_of(manifest)
        return reader.split(manifest, block_of(reader, self.cfg.data))[1]

    def split_name(self, manifest: Manifest) -> str:
        """The run's split in words ("train S1,S3,S4 / test S2"), as its reader describes it."""
        reader = reader_of(manifest)
        return reader.describe_split(block_of(reader, self.cfg.data)) if reader.describe_split else ""

    def dataset(self, manifest: Manifest, indices: list[int], *, with_train_inputs: bool = False) -> ClipDataset:
        """Test-transform clips of ``indices`` with the model's evaluation inputs (or its training ones)."""
        mods = modalities(self.cfg, train=with_train_inputs)
        data = copy.copy(self.cfg.data)
        data.frame_cache = ""  # a run's frame cache may be gone; it changes no value, so the frames are decoded
        return ClipDataset(manifest, indices, data, modalities=mods, train=False, seed=self.cfg.seed)


def _differ(a: list[str], b: list[str]) -> str:
    extra = sorted(set(a) - set(b))[:3]
    missing = sorted(set(b) - set(a))[:3]
    bits = ([f"new: {', '.join(extra)}"] if extra else []) + ([f"missing: {', '.join(missing)}"] if missing else [])
    return f"({'; '.join(bits)}) other" if bits else "in another order"


def vocabulary_of(ckpt: dict[str, Any], cfg: ExperimentConfig) -> Vocabulary:
    if ckpt.get("vocabulary"):
        return Vocabulary.from_dict(ckpt["vocabulary"])
    fmt = ckpt.get("data_format") or (cfg.data.format if cfg.data.format != "auto" else LEGACY_FORMAT)
    rebuild = reader_spec(fmt).vocabulary_from_classes
    classes = list(ckpt["classes"])
    return rebuild(classes) if rebuild is not None else Vocabulary(classes)


def open_run(
    path: str | Path,
    which: str = "best",
    *,
    key: str | None = None,
    inputs: tuple[str, ...] | None = None,
    vocab: Vocabulary | None = None,
    build: bool = True,
) -> OpenRun:
    """Open a run folder (its ``best.pt`` or ``last.pt``) or a checkpoint file.

    Args:
        which: ``best`` or ``last`` for a run folder.
        key: the config key that named this run (``init.from``, ``model.two_stream.rgb_run``), for messages.
        inputs: refuse a run whose model reads other inputs (a stream slot's ``("rgb",)``).
        vocab: refuse a run trained on other classes.
        build: build the model and load its weights (False: config and vocabulary only).

    Raises:
        FparError: missing / corrupt checkpoint, or a run that does not fit ``inputs`` / ``vocab``.
    """
    where = f"{key}={path}" if key else str(path)
    try:
        ckpt = load_checkpoint(path, which)
    except FparError as e:
        raise FparError(f"{key}: {e}" if key else str(e)) from None
    cfg = from_dict(ckpt["config"], ckpt["path"])
    spec = model_spec(cfg.model.name)
    voc = vocabulary_of(ckpt, cfg)
    if inputs is not None and tuple(spec.inputs(cfg, False)) != tuple(inputs):
        raise FparError(
            f"{where} is a run of model '{spec.name}', which reads {'+'.join(spec.inputs(cfg, False))}; this slot "
            f"needs a model that reads {'+'.join(inputs)}"
        )
    if vocab is not None and list(voc.actions) != list(vocab.actions):
        raise FparError(
            f"{where} was trained on {len(voc.actions)} classes {_differ(voc.actions, vocab.actions)} than this "
            f"dataset's {len(vocab.actions)}; train it on the same dataset"
        )
    model = model_from_checkpoint(ckpt, cfg=cfg, vocab=voc).eval() if build else None
    return OpenRun(Path(ckpt["path"]), ckpt, cfg, voc, spec, model)


def model_from_checkpoint(
    ckpt: dict[str, Any], *, cfg: ExperimentConfig | None = None, vocab: Vocabulary | None = None
) -> nn.Module:
    """Rebuild a model from a checkpoint's own config and load its weights (no pretrained files needed)."""
    cfg = copy.deepcopy(cfg) if cfg is not None else from_dict(ckpt["config"], ckpt.get("path", "checkpoint"))
    vocab = vocab or vocabulary_of(ckpt, cfg)
    spec = model_spec(cfg.model.name)
    streams = None
    if spec.streams:
        saved = ckpt.get("streams")
        if not saved or set(saved) != set(spec.streams):
            raise FparError(f"{ckpt.get('path')} is a {spec.name} checkpoint without its stream configs")
        streams = {}
        for name, d in saved.items():
            scfg = from_dict(d, "checkpoint")
            scfg.model.pretrained = "none"
            streams[name], _ = build_model(scfg, vocab)
    cfg.model.pretrained = "none"
    model, _ = build_model(cfg, vocab, streams=streams)
    bad = _other_shapes(model, ckpt["model"])
    if bad:
        k = bad[0]
        raise FparError(
            f"{ckpt.get('path')} holds weights of other shapes than its own config builds ({k}: "
            f"{tuple(ckpt['model'][k].shape)}, not {tuple(model.state_dict()[k].shape)}); it is damaged or was "
            "assembled from another run"
        )
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if unexpected or [k for k in missing if not k.startswith(spec.optional_weights)]:
        raise FparError(
            f"{ckpt.get('path')} does not match its own config (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); it was written by another fpar version"
        )
    return model


def _other_shapes(model: nn.Module, state: dict[str, Any]) -> list[str]:
    """The names in ``state`` that ``model`` has with another shape (``load_state_dict`` would raise on them)."""
    own = model.state_dict()
    return [k for k, v in state.items() if k in own and own[k].shape != v.shape]


def init_from(model: nn.Module, cfg: ExperimentConfig, vocab: Vocabulary) -> dict[str, Any]:
    """``init.from``: start from the weights of an earlier run (stage 1 -> stage 2). Heads the earlier run did not
    have (MS, discriminator) keep their fresh init. Returns a short report for the run log."""
    src = open_run(cfg.init.from_, cfg.init.checkpoint, key="init.from", vocab=vocab, build=False)
    if src.cfg.model.name != cfg.model.name:
        raise FparError(
            f"init.from={cfg.init.from_} is a run of model '{src.cfg.model.name}'; this run trains {cfg.model.name}"
        )
    if src.cfg.model.backbone != cfg.model.backbone:  # a deeper trunk would load the shallower one's first blocks
        raise FparError(
            f"init.from={cfg.init.from_} is a run with model.backbone={src.cfg.model.backbone}; this run has "
            f"{cfg.model.backbone}: use a run of the same backbone, or set model.backbone={src.cfg.model.backbone}"
        )
    ckpt = src.ckpt
    bad = _other_shapes(model, ckpt["model"])
    if bad:
        raise FparError(
            f"init.from={cfg.init.from_} has other shapes for {bad[:3]} (e.g. another backbone or "
            "mem_size); use a run with the same model settings"
        )
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    return {"from": ckpt["path"], "epoch": ckpt.get("epoch"), "new": missing, "ignored": unexpected}
