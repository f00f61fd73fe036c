"""From a config (or a checkpoint) to a model, and from a batch to the model's inputs."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..config import ExperimentConfig, from_dict, to_dict
from ..errors import FparError
from ..models.backbone import load_weights_file, unwrap_state_dict
from ..models.outputs import ModelOutput
from ..registry import create_model
from .checkpoint import load_checkpoint

logger = logging.getLogger(__name__)


def modalities(cfg: ExperimentConfig) -> tuple[str, ...]:
    """What the data loader must provide for this model."""
    name = cfg.model.name
    if name == "flow_resnet":
        return ("flow",)
    if name == "two_stream":
        return ("rgb", "flow")
    return ("rgb", "mmaps") if cfg.model.ms.enabled else ("rgb",)


def _resolve_backbone_classes(cfg: ExperimentConfig) -> int:
    """Classes of the trunk's own fc (what the CAM reads): from the pretrained file when it is one."""
    if cfg.model.backbone_classes > 0:
        return cfg.model.backbone_classes
    p = cfg.model.pretrained
    if p and p.lower() not in ("none", "imagenet") and Path(p).is_file():
        try:
            sd = unwrap_state_dict(load_weights_file(Path(p)), p)
        except FparError:
            return 1000  # build_trunk reports the bad file with its own message
        if "fc.weight" in sd:
            return int(sd["fc.weight"].shape[0])
    return 1000


def build_model(cfg: ExperimentConfig, classes: list[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a config describes. Returns (model, extra) where ``extra`` holds what a checkpoint needs to
    rebuild it (the stream configs of a two-stream model). Writes resolved values back into ``cfg``."""
    n = len(classes)
    m = cfg.model
    extra: dict[str, Any] = {}
    if m.name == "ego_rnn":
        m.backbone_classes = _resolve_backbone_classes(cfg)
        model = create_model(
            "ego_rnn",
            num_classes=n,
            backbone=m.backbone,
            pretrained=m.pretrained,
            backbone_classes=m.backbone_classes,
            input_size=cfg.data.input_size,
            cam=m.cam,
            mem_size=m.mem_size,
            dropout=m.dropout,
            ms=m.ms,
            disc=m.disc,
            repflow=m.repflow,
        )
    elif m.name == "flow_resnet":
        model = create_model(
            "flow_resnet",
            num_classes=n,
            backbone=m.backbone,
            pretrained=m.pretrained,
            stack=cfg.data.flow_stack,
            dropout=m.dropout,
        )
    elif m.name == "two_stream":
        if not m.rgb_run or not m.flow_run:
            raise FparError("the two-stream model needs model.rgb_run=RUN (Ego-RNN stage 2) and model.flow_run=RUN")
        rgb, rgb_cfg = load_stream(m.rgb_run, "ego_rnn", classes, "model.rgb_run")
        flow, flow_cfg = load_stream(m.flow_run, "flow_resnet", classes, "model.flow_run")
        if flow_cfg.data.flow_stack != cfg.data.flow_stack:
            logger.warning("data.flow_stack set to %d from the flow run", flow_cfg.data.flow_stack)
            cfg.data.flow_stack = flow_cfg.data.flow_stack
        extra["streams"] = {"rgb": to_dict(rgb_cfg), "flow": to_dict(flow_cfg)}
        model = create_model("two_stream", rgb=rgb, flow=flow, num_classes=n, dropout=m.fusion_dropout)
    else:  # validated in config.validate
        raise FparError(f"unknown model.name {m.name!r}")
    return model, extra


def load_stream(run: str, expected: str, classes: list[str], key: str) -> tuple[nn.Module, ExperimentConfig]:
    """A trained single-stream model from a run folder or checkpoint, checked against what the caller needs."""
    try:
        ckpt = load_checkpoint(run)
    except FparError as e:
        raise FparError(f"{key}: {e}") from None
    scfg = from_dict(ckpt["config"], ckpt["path"])
    if scfg.model.name != expected:
        raise FparError(f"{key}={run} is a run of model '{scfg.model.name}'; give a trained {expected} run")
    if list(ckpt["classes"]) != list(classes):
        raise FparError(
            f"{key}={run} was trained on {len(ckpt['classes'])} classes that differ from this dataset's "
            f"{len(classes)}; train it on the same dataset"
        )
    model = model_from_checkpoint(ckpt)
    return model, scfg


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild a model from a checkpoint's own config and load its weights (no pretrained files needed)."""
    cfg = from_dict(ckpt["config"], ckpt.get("path", "checkpoint"))
    classes = list(ckpt["classes"])
    if cfg.model.name == "two_stream":
        streams = ckpt.get("streams")
        if not streams:
            raise FparError(f"{ckpt.get('path')} is a two-stream checkpoint without its stream configs")
        rgb_cfg = from_dict(streams["rgb"], "checkpoint")
        flow_cfg = from_dict(streams["flow"], "checkpoint")
        rgb_cfg.model.pretrained = flow_cfg.model.pretrained = "none"
        rgb, _ = build_model(rgb_cfg, classes)
        flow, _ = build_model(flow_cfg, classes)
        model = create_model(
            "two_stream", rgb=rgb, flow=flow, num_classes=len(classes), dropout=cfg.model.fusion_dropout
        )
    else:
        cfg = copy.deepcopy(cfg)
        cfg.model.pretrained = "none"
        model, _ = build_model(cfg, classes)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if unexpected or [k for k in missing if not k.startswith(("ms_head.", "disc."))]:
        raise FparError(
            f"{ckpt.get('path')} does not match its own config (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); it was written by another fpar version"
        )
    return model


def init_from(model: nn.Module, cfg: ExperimentConfig, classes: list[str]) -> dict[str, Any]:
    """``init.from``: start from the weights of an earlier run (stage 1 -> stage 2). Heads the earlier run did not
    have (MS, discriminator) keep their fresh init. Returns a short report for the run log."""
    ckpt = load_checkpoint(cfg.init.from_, cfg.init.checkpoint)
    src = from_dict(ckpt["config"], ckpt["path"])
    if src.model.name != cfg.model.name:
        raise FparError(
            f"init.from={cfg.init.from_} is a run of model '{src.model.name}'; this run trains {cfg.model.name}"
        )
    if list(ckpt["classes"]) != list(classes):
        raise FparError(
            f"init.from={cfg.init.from_} was trained on other classes ({len(ckpt['classes'])}) than this "
            f"dataset's {len(classes)}"
        )
    own = model.state_dict()
    bad = [k for k, v in ckpt["model"].items() if k in own and own[k].shape != v.shape]
    if bad:
        raise FparError(
            f"init.from={cfg.init.from_} has other shapes for {bad[:3]} (e.g. another backbone or "
            "mem_size); use a run with the same model settings"
        )
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    return {"from": ckpt["path"], "epoch": ckpt.get("epoch"), "new": missing, "ignored": unexpected}


def forward_batch(model: nn.Module, cfg: ExperimentConfig, batch: dict, *, train: bool) -> ModelOutput:
    name = cfg.model.name
    if name == "flow_resnet":
        return model(batch["flow"])
    if name == "two_stream":
        return model(batch["rgb"], batch["flow"])
    static_idx = batch.get("static_idx") if (train and cfg.model.disc.enabled) else None
    return model(batch["rgb"], static_idx=static_idx, with_ms=train and cfg.model.ms.enabled)
