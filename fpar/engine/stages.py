"""Stages are data: which parameters train, which BatchNorms run in train mode, per-group learning rates.

A stage is the list of regexes ``train.trainable`` over parameter names (e.g. ``^lstm\\.``,
``^backbone\\.layer4\\.\\d+\\.conv[12]\\.weight``); there is no ``if stage == 2`` anywhere. See ``configs/`` for
the report's stages.
"""

from __future__ import annotations

import re

from torch import nn

from ..config import OptimConfig
from ..errors import FparError


def _compile(patterns: list[str], what: str) -> list[re.Pattern]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise FparError(f"{what} pattern {p!r} is not a valid regular expression ({e})") from None
    return out


def apply_trainable(model: nn.Module, patterns: list[str]) -> list[str]:
    """Freeze every parameter, then unfreeze those whose name matches a pattern. Returns the trainable names."""
    regs = _compile(patterns, "train.trainable")
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(r.search(name) for r in regs))
        if p.requires_grad:
            names.append(name)
    unused = [r.pattern for r in regs if not any(r.search(n) for n, _ in model.named_parameters())]
    if unused:
        raise FparError(
            f"train.trainable pattern(s) {', '.join(map(repr, unused))} match no parameter of this model; "
            "run `fpar model-params CONFIG` to list the names"
        )
    if not names:
        raise FparError("train.trainable selects no parameter: nothing would train")
    return names


def set_train_mode(model: nn.Module, bn_train: list[str]) -> None:
    """Training mode for dropout and heads; BatchNorm stays frozen (eval) except under ``bn_train`` modules."""
    regs = _compile(bn_train, "train.bn_train")
    model.train()
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(r.search(name) for r in regs):
            m.eval()


def param_groups(model: nn.Module, optim: OptimConfig, extra: list[dict] | None = None) -> list[dict]:
    """Optimizer groups: ``optim.groups`` entries ({pattern, lr}), then ``extra`` ones; the first match wins; the
    remaining trainable parameters use ``optim.lr``. A group that gets no trainable parameter is an error."""
    groups: list[dict] = []
    regs = []
    for g in [*optim.groups, *(extra or [])]:
        if "pattern" not in g or "lr" not in g:
            raise FparError(f"each optim.groups entry needs 'pattern' and 'lr', got {g}")
        regs.append((_compile([g["pattern"]], "optim.groups")[0], float(g["lr"])))
        groups.append({"params": [], "lr": float(g["lr"]), "name": g["pattern"]})
    default = {"params": [], "lr": optim.lr, "name": "default"}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        for i, (r, _) in enumerate(regs):
            if r.search(name):
                groups[i]["params"].append(p)
                break
        else:
            default["params"].append(p)
    empty = [g["name"] for g in groups if not g["params"]]
    if empty:
        raise FparError(f"optim.groups pattern(s) {', '.join(map(repr, empty))} match no trainable parameter")
    groups.append(default)
    for g in groups:
        g["initial_lr"] = g["lr"]
    return [g for g in groups if g["params"]]
