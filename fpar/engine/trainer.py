"""One `fpar train` run = one stage: build, train, evaluate every epoch, checkpoint, log, resume.

Run folder (``runs/<name>/`` or ``out``)::

    config.yaml      the resolved config           provenance.json  fpar/torch versions, git commit, data hash
    metrics.jsonl    one JSON line per epoch       summary.json     best/final accuracies (percent)
    best.pt last.pt  self-contained checkpoints    tb/              TensorBoard events
    confusion.csv    confusion matrix of the best epoch
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..config import ExperimentConfig, dump, save_config, to_dict
from ..data.dataset import ClipDataset, collate_clips, make_splits
from ..data.manifest import Manifest, Vocabulary
from ..data.readers import read_dataset
from ..data.transforms import FLOW_MEAN, FLOW_STD, RGB_MEAN, RGB_STD, normalize_batch
from ..errors import FparError
from ..locks import FolderLock
from ..models.backbone import ResNetTrunk
from ..models.heads import total_loss
from ..utils import (
    atomic_write_json,
    atomic_write_text,
    fault,
    flush_denormal,
    keep_freed_memory,
    read_json_object,
    remove_leftover_temps,
    seed_everything,
)
from ..version import __version__
from . import distributed
from .build import (
    build_model,
    compile_model,
    forward_batch,
    modalities,
    resolve_trainable,
    spec_of,
    to_channels_last,
)
from .checkpoint import BackgroundWriter, load_checkpoint, rng_state, set_rng_state
from .feature_cache import EvalMemo, FeatureCache
from .metrics import classification_metrics, group_masks
from .run import init_from
from .stages import apply_trainable, param_groups, set_train_mode

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FparError(f"train.device={name} but CUDA is not available here; use train.device=cpu or auto")
    if name.startswith("mps") and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FparError(f"train.device={name} but this PyTorch has no usable MPS device; use train.device=cpu or auto")
    return torch.device(name)


def lr_factor(cfg: ExperimentConfig, epoch: int) -> float:
    """LR multiplier for 0-based ``epoch``: what MultiStepLR / StepLR give when stepped at the END of each epoch
    (reference-spec §8: the original stepped at the start, one epoch early under PyTorch >= 1.1)."""
    s = cfg.sched
    if s.name == "multistep":
        return s.gamma ** sum(1 for m in s.milestones if epoch >= m)
    if s.name == "step":
        return s.gamma ** (epoch // max(s.step_size, 1))
    return 1.0


def make_optimizer(model: torch.nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    """Adam or SGD over the trainable parameters in their groups: ``optim.groups``, then the groups the model asks
    for itself (``model.param_groups(base_lr)``: e.g. the representation-flow layer's LR multiplier)."""
    own = getattr(model, "param_groups", None)
    groups = param_groups(model, cfg.optim, own(cfg.optim.lr) if callable(own) else [])
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay, eps=o.eps)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def _to(batch: dict, device: torch.device) -> dict:
    """The batch on ``device`` (non-blocking copies from pinned memory), its uint8 RGB clips normalised there."""
    moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if isinstance(moved.get("rgb"), list):
        moved["rgb"] = [r.to(device, non_blocking=True) if torch.is_tensor(r) else r for r in moved["rgb"]]
    return normalize_batch(moved)


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except Exception:
        return None


def provenance(manifest: Manifest) -> dict[str, Any]:
    return {
        "fpar": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dataset_root": manifest.root,
        "dataset_manifest_sha": manifest.fingerprint(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def normalisation(cfg: ExperimentConfig) -> dict:
    return {
        "rgb_mean": list(RGB_MEAN),
        "rgb_std": list(RGB_STD),
        "flow_mean": FLOW_MEAN,
        "flow_std": FLOW_STD,
        "scale_size": cfg.data.scale_size,
    }


def run_dir_for(cfg: ExperimentConfig) -> Path:
    return Path(cfg.out) if cfg.out else Path("runs") / cfg.name


def make_loader(ds: ClipDataset, cfg: ExperimentConfig, *, train: bool, epoch: int = 0) -> DataLoader:
    g = torch.Generator()
    # the shuffle order depends only on (seed, epoch): exact resume; reduced into torch's 64-bit seed range
    g.manual_seed((cfg.seed * 1_000_003 + epoch) % 2**63)
    nw = cfg.data.num_workers
    d = distributed.current()
    if d.enabled:  # this rank's part of the one-process batch sequence (train) or of the videos (evaluation)
        common = dict(num_workers=nw, persistent_workers=False, pin_memory=torch.cuda.is_available())
        if train:
            sampler = distributed.GlobalBatchSampler(
                distributed.epoch_order(len(ds), g), cfg.train.batch_size, d.rank, d.world
            )
            # the workers' base seed from a generator of its own, not from the global RNG (exact resume)
            loader = DataLoader(ds, batch_sampler=sampler, generator=g, collate_fn=collate_clips, **common)
            loader.plan = sampler.plan  # (samples of this rank that count, samples in the batch), per batch
            return loader
        shard = distributed.ShardSampler(len(ds), d.rank, d.world)
        return DataLoader(
            ds, batch_size=cfg.train.eval_batch_size, sampler=shard, drop_last=False, collate_fn=collate_clips, **common
        )
    return DataLoader(
        ds,
        batch_size=cfg.train.batch_size if train else cfg.train.eval_batch_size,
        shuffle=train,
        generator=g if train else None,
        num_workers=nw,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
        collate_fn=collate_clips,
    )


# --------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict_all(
    model, loader, cfg: ExperimentConfig, device, *, progress: bool = False, desc: str = "eval", cache=None
) -> dict:
    """Everything evaluation needs over a loader: ``logits`` (N, C), ``labels`` (N,), ``index`` (N,) (the videos'
    manifest indices), ``loss`` (mean action cross-entropy) and, with verb/noun heads, ``verb_logits``,
    ``noun_logits``, ``verb``, ``noun``. ``cache``: what replaces the family's forward for the frozen prefix, its
    ``forward(model, batch, train)`` (the run's `FeatureCache` or `EvalMemo`); None: the family's own forward."""
    from tqdm import tqdm

    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    losses = []
    source = iter(loader)
    it = tqdm(source, total=len(loader), desc=desc, leave=False, dynamic_ncols=True) if progress else source
    for batch in _batches(source, it):
        batch = _to(batch, device)
        with _autocast(cfg, device):
            out = (
                cache.forward(model, batch, False)
                if cache is not None
                else forward_batch(model, cfg, batch, train=False)
            )
        out.logits = out.logits.float()
        fault("eval")
        # unlabelled segments (EPIC's test split: label -1) score no loss
        losses.append(F.cross_entropy(out.logits, batch["label"], reduction="sum", ignore_index=-1).item())
        got = {"logits": out.logits, "labels": batch["label"], "index": batch["index"]}
        if getattr(out, "verb_logits", None) is not None:
            got.update(verb_logits=out.verb_logits.float(), noun_logits=out.noun_logits.float())
            if "verb" in batch:  # unlabelled segments (a submission) have scores but no targets
                got.update(verb=batch["verb"], noun=batch["noun"])
        for k, v in got.items():
            parts.setdefault(k, []).append(torch.as_tensor(v).cpu())
    local: dict = {k: torch.cat(v) for k, v in parts.items()}
    loss_sum = sum(losses)
    if distributed.current().enabled:  # each rank scored its share of the videos: put them together
        shares = distributed.gather((local, loss_sum))
        keys = dict.fromkeys(k for sh, _ in shares for k in sh)  # a rank with no video has none
        local = {k: torch.cat([sh[k] for sh, _ in shares if k in sh]) for k in keys}
        loss_sum = sum(ls for _, ls in shares)
    n = len(local.get("labels", []))
    if n == 0:
        raise FparError("the evaluation split is empty; check the dataset's test split (fpar data check)")
    local["loss"] = loss_sum / n
    return local


def predict(model, loader, cfg: ExperimentConfig, device, *, progress: bool = False, desc: str = "eval"):
    """Logits (N, C), labels (N,), mean loss over the loader."""
    r = predict_all(model, loader, cfg, device, progress=progress, desc=desc)
    return r["logits"], r["labels"], r["loss"]


def _batches(source, it):
    """Iterate ``it`` (``source``, a loader's iterator, or a progress bar over it); on an error, stop the loader's
    worker processes at once. Left to garbage collection, a multi-worker iterator that stopped part-way takes 5 s per
    worker to shut down (its workers wait on their prefetch queues), long after the error line is printed."""
    try:
        yield from it
    except BaseException:
        _stop_workers(source)
        raise


def _stop_workers(source) -> None:
    """Terminate the worker processes of a loader iterator that will not be read to its end."""
    for w in getattr(source, "_workers", None) or []:
        if w.is_alive():
            w.terminate()


@functools.cache
def _cpu_has_bf16() -> bool:
    """Whether oneDNN computes in bf16 on this CPU (asked once: `amp_dtype` runs for every batch)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether ``device`` (a GPU) computes in bf16 natively. Since torch 2.4 ``is_bf16_supported()`` also says yes
    where bf16 is only emulated (V100, T4: slow, and cuDNN has no bf16 convolutions there), which would leave the fp16
    + GradScaler path unused; so emulation is excluded, and the GPU asked is the training one, not the current one."""
    with torch.cuda.device(device):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4: no emulation is counted
            return torch.cuda.is_bf16_supported()


def amp_dtype(cfg: ExperimentConfig, device: torch.device) -> torch.dtype | None:
    """What ``train.amp=true`` autocasts to: bf16 where the device computes in it, fp16 (with a GradScaler) on GPUs
    without bf16; None with ``train.amp=false``. A CPU without bf16 is a one-line error, not a silent fp32 run."""
    if not cfg.train.amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_bf16(device) else torch.float16
    if device.type == "cpu":
        if not _cpu_has_bf16():
            raise FparError(
                "train.amp=true: this CPU has no bf16 arithmetic (oneDNN reports none), so mixed precision would only "
                "slow it down; set train.amp=false (or train on a GPU)"
            )
        return torch.bfloat16
    raise FparError(f"train.amp=true is not supported on {device.type}; set train.amp=false")


def _autocast(cfg: ExperimentConfig, device: torch.device):
    dtype = amp_dtype(cfg, device)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def _find_unused(cfg: ExperimentConfig, trainable: list[str], log) -> bool:
    """DDP's ``find_unused_parameters``: ``train.ddp_find_unused``, or on by itself when the stage trains
    parameters the family says never get a gradient (`fpar.registry.ModelSpec.no_gradient`), which DDP refuses
    otherwise. Only read under several processes."""
    spec = spec_of(cfg)
    if cfg.train.ddp_find_unused or spec.no_gradient is None or not distributed.current().enabled:
        return cfg.train.ddp_find_unused
    patterns = [re.compile(r) for r in spec.no_gradient(cfg)]
    idle = [n for n in trainable if any(r.search(n) for r in patterns)]
    if idle:
        log(
            f"{', '.join(idle)}: trainable but never given a gradient in this model, so DDP looks for unused "
            "parameters every step (train.ddp_find_unused)"
        )
    return bool(idle)


def metrics_of(r: dict, vocab: Vocabulary, manifest: Manifest | None = None) -> dict:
    """`classification_metrics` of `predict_all`'s output; the manifest adds its readers' group metrics."""
    groups = group_masks(manifest, r["index"].tolist()) if manifest is not None else None
    m = classification_metrics(
        r["logits"],
        r["labels"],
        vocab,
        verb_logits=r.get("verb_logits"),
        noun_logits=r.get("noun_logits"),
        verb_labels=r.get("verb"),
        noun_labels=r.get("noun"),
        groups=groups,
    )
    m["loss"] = r["loss"]
    return m


def evaluate(model, loader, cfg, device, vocab: Vocabulary, *, progress=False, desc="eval", cache=None) -> dict:
    r = predict_all(model, loader, cfg, device, progress=progress, desc=desc, cache=cache)
    return metrics_of(r, vocab, getattr(loader.dataset, "manifest", None))


def select_metric(cfg: ExperimentConfig) -> str:
    """The metric that picks the best epoch: ``train.select_metric``, or with ``auto`` ``action_top1`` for verb/noun
    heads (EPIC's headline figure) and ``top1`` otherwise."""
    m = cfg.train.select_metric
    if m == "auto":
        return "action_top1" if cfg.model.heads == "verb_noun" else "top1"
    return m


# --------------------------------------------------------------------------------------------------------------
# Training


class TrainStep(nn.Module):
    """One training forward: the model's outputs and its weighted loss terms. DistributedDataParallel wraps this
    module, so every family's forward (whatever its spec calls) runs inside DDP's forward and its gradients are
    averaged over the processes."""

    def __init__(self, model: nn.Module, cfg: ExperimentConfig, cache: FeatureCache | None = None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.cache = cache  # data.feature_cache: the frozen trunk's features, read or computed per clip

    def forward(self, batch: dict, device: torch.device):
        with _autocast(self.cfg, device):
            if self.cache is not None:
                out = self.cache.forward(self.model, batch, train=True)
            else:
                out = forward_batch(self.model, self.cfg, batch, train=True)
        out.float()  # losses in float32 under AMP
        loss, parts = total_loss(self.model.losses(out, batch))  # the heads' terms, weighted as configured
        return loss, out.logits.detach(), parts


def train_one_epoch(
    model,
    loader,
    optimizer,
    cfg: ExperimentConfig,
    device,
    *,
    epoch: int,
    progress: bool,
    step: nn.Module | None = None,
    scaler=None,
) -> dict:
    """One epoch; ``step`` is the `TrainStep` (DDP-wrapped when several processes train) of ``model``; ``scaler``
    the GradScaler of fp16 autocast (GPUs without bf16)."""
    from tqdm import tqdm

    d = distributed.current()
    step = step if step is not None else TrainStep(model, cfg)
    plan = getattr(loader, "plan", None)  # several processes: each batch's (own samples, global samples)
    set_train_mode(model, cfg.train.bn_train)
    sums: dict[str, float] = {}
    correct = seen = 0
    total = cfg.train.max_batches or len(loader)
    source = iter(loader)
    it = (
        tqdm(source, total=total, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False, dynamic_ncols=True)
        if progress
        else source
    )
    # train.max_batches: islice stops before the loader decodes a batch that would not be used
    for i, batch in enumerate(itertools.islice(_batches(source, it), total)):
        batch = _to(batch, device)
        try:
            loss, logits, parts = step(batch, device)
        except RuntimeError as e:
            if "unused parameters" in str(e) or "finished reduction in the prior iteration" in str(e):
                raise FparError(
                    "this model leaves trainable parameters unused in some steps, which DistributedDataParallel "
                    "refuses by default: set train.ddp_find_unused=true (or leave them out of train.trainable)"
                ) from None
            raise
        b = batch["label"].shape[0]
        own, scale = b, 1.0
        if plan is not None:  # DDP averages over processes: this scale makes it the mean over the global batch
            own, n = plan[i]
            scale = own * d.world / n
        value = loss.item()
        check = distributed.all_sum([0.0 if math.isfinite(value) else 1.0])[0] if d.enabled else 0.0
        if not math.isfinite(value) or check:
            raise FparError(
                f"loss became {value if not math.isfinite(value) else 'nan on another process'} at epoch "
                f"{epoch + 1}, batch {i + 1}; lower optim.lr or check the data (the run stops here; last.pt holds "
                "the previous epoch)"
            )
        optimizer.zero_grad(set_to_none=True)
        scaled = loss * scale if scale != 1.0 else loss
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if scaler is not None and cfg.train.grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], cfg.train.grad_clip
            )
        if scaler is not None:
            scaler.step(optimizer)  # skips the step when fp16 overflowed
            scaler.update()
        else:
            optimizer.step()
        fault("batch")
        seen += own
        correct += (logits[:own].argmax(1) == batch["label"][:own]).sum().item()
        for k, v in {"loss": value, **parts}.items():
            sums[k] = sums.get(k, 0.0) + v * own
        if progress:
            it.set_postfix(loss=f"{sums['loss'] / max(seen, 1):.3f}", acc=f"{100 * correct / max(seen, 1):.1f}")
    if total < len(loader):
        _stop_workers(source)  # the rest of the epoch is not read (train.max_batches)
    if d.enabled:  # the epoch's figures over every process's samples
        keys = sorted(sums)
        tot = distributed.all_sum([seen, correct, *(sums[k] for k in keys)])
        seen, correct = int(tot[0]), tot[1]
        sums = dict(zip(keys, tot[2:]))
    if seen == 0:
        raise FparError("the training split is empty; check the dataset's training split (fpar data check)")
    out = {f"train_{k}": v / seen for k, v in sums.items()}
    out["train_top1"] = 100 * correct / seen
    return out


def prepare(cfg: ExperimentConfig):
    """Data, splits and datasets of a config."""
    manifest = read_dataset(cfg.data)
    splits = make_splits(manifest, cfg.data, seed=cfg.seed)
    mods = modalities(cfg, train=True)
    # evaluation reads only what inference needs (never the motion maps): every model is scored on the same videos
    eval_mods = modalities(cfg, train=False)
    train_ds = ClipDataset(manifest, splits.train, cfg.data, modalities=mods, train=True, seed=cfg.seed)
    select_ds = ClipDataset(manifest, splits.select, cfg.data, modalities=eval_mods, train=False, seed=cfg.seed)
    test_ds = (
        select_ds
        if splits.select == splits.test
        else ClipDataset(manifest, splits.test, cfg.data, modalities=eval_mods, train=False, seed=cfg.seed)
    )
    for what, ds in (("training", train_ds), ("selection", select_ds)):
        if len(ds) == 0:
            raise FparError(
                f"the {what} split of {manifest.root} is empty ({splits.describe(cfg.data)}); check the split's keys "
                "(data.<format>.train_subjects / test_subjects, data.split) and the videos (fpar data check)"
            )
    if len(train_ds) < len(splits.train):
        logger.warning(
            "%d training videos lack a modality (%s) and are skipped",
            len(splits.train) - len(train_ds),
            ", ".join(mods),
        )
    return manifest, splits, train_ds, select_ds, test_ds


# A folder with these holds a run's results (config.yaml alone, or the best.pt of an epoch 1 that never ended: none)
RESULT_FILES = ("best.pt", "summary.json")
# What else a run writes (after its config.yaml, which it writes first): files, and its TensorBoard folder
RUN_FILES = ("metrics.jsonl", "provenance.json", "confusion.csv")
RUN_FOLDERS = ("tb",)


def train(
    cfg: ExperimentConfig, *, resume: str | os.PathLike | None = None, progress: bool | None = None, log=print
) -> dict:
    """Run one stage. ``resume`` continues an interrupted run from its ``last.pt`` (same result as no stop), or
    extends a finished one when ``train.epochs`` is larger than the epochs it ran.

    One writer per run folder: the folder's lock (`fpar.locks.FolderLock`) is held from the first write to the
    summary; a folder that already holds results of another run is refused, never written over.
    """
    progress = cfg.train.progress if progress is None else progress
    progress = progress and sys.stderr.isatty()  # bars only on a terminal; a log file gets one line per epoch
    run = Path(resume) if resume else run_dir_for(cfg)
    with flush_denormal(cfg.train.flush_denormal):
        if distributed.launched():  # torchrun: rank 0 owns the folder, every rank trains (engine/distributed.py)
            return _train_distributed(cfg, run, resume, progress, log)
        _make_run_folder(run)
        with FolderLock(run, what=f"fpar train {cfg.name}") as lock:
            return _train_locked(cfg, run, resume, lock, progress, log)


def _make_run_folder(run: Path) -> None:
    if run.exists() and not run.is_dir():
        raise FparError(f"out={run} is a file, not a folder; give a new folder for the run")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FparError(f"cannot create the run folder {run} ({e.strerror}); choose another out=") from None


class _NoLock:
    """What ranks other than 0 hold: they never write the run folder."""

    def check(self) -> None:
        pass


def _train_distributed(cfg, run: Path, resume, progress: bool, log) -> dict:
    d = distributed.setup(cfg.train.device)
    lock = None
    try:
        err = None
        if d.main:
            try:
                _make_run_folder(run)
                lock = FolderLock(run, what=f"fpar train {cfg.name} (rank 0 of {d.world})").acquire()
            except FparError as e:
                err = str(e)
        err = distributed.broadcast(err)  # one answer for every rank: none waits for a rank that stopped
        if err:
            raise FparError(err)
        quiet = lambda msg: None  # noqa: E731
        return _train_locked(cfg, run, resume, lock or _NoLock(), progress and d.main, log if d.main else quiet)
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown()


def _epoch_of(path: Path) -> int | None:
    try:
        return int(load_checkpoint(path).get("epoch") or 0)
    except FparError:
        return None


def _train_locked(cfg, run: Path, resume, lock: FolderLock, progress: bool, log) -> dict:
    as_given = dump(cfg)  # before build_model resolves its automatic values (model.backbone_classes=0)
    for name in ("config.yaml", *RESULT_FILES, "last.pt", *RUN_FILES):  # before anything is read or written
        if (run / name).is_dir():
            raise FparError(f"{run / name} is a folder where the run writes a file; move it away and run again")
    for name in RUN_FOLDERS:
        if (run / name).exists() and not (run / name).is_dir():
            raise FparError(
                f"{run / name} is a file where the run keeps its TensorBoard folder; move it away and run again"
            )
    last = None
    if resume:
        if not (run / "last.pt").is_file() and (run / "best.pt").is_file():
            raise FparError(
                f"{run} has no last.pt, so it cannot be resumed (its best.pt holds weights, not the optimiser state "
                f"and the rest of the schedule); start a new run from those weights with init.from={run}"
            )
        last = load_checkpoint(run, "last")
        done = int(last["epoch"])
        if last.get("finished") and cfg.train.epochs <= done and (run / "summary.json").is_file():
            log(f"{run} already finished {done} epochs; nothing to resume (train.epochs=N with N > {done} extends it)")
            summary = read_json_object(run / "summary.json")
            if summary is None:
                raise FparError(
                    f"{run / 'summary.json'} is damaged; delete it and run `fpar train --resume {run}` again, which "
                    "writes it anew from the run's checkpoints"
                )
            return summary
    else:
        if (run / "last.pt").exists():
            raise FparError(
                f"{run} already holds a run; resume it with `fpar train --resume {run}` or set out=NEW_FOLDER"
            )
        held = [n for n in RESULT_FILES if (run / n).exists()]
        if held == ["best.pt"] and _epoch_of(run / "best.pt") == 1:
            held = []  # killed in epoch 1 between best.pt and last.pt: a partial run, started again
        if held:
            raise FparError(
                f"{run} already holds results of a run ({', '.join(held)}); nothing was changed: set out=NEW_FOLDER"
            )
        if not (run / "config.yaml").is_file():  # a run writes its config.yaml first: these are someone else's
            foreign = [n for n in (*RUN_FILES, *RUN_FOLDERS) if (run / n).exists()]
            if foreign:
                raise FparError(
                    f"{run} holds {', '.join(foreign)} but no config.yaml of a run: a run there would write over "
                    "them; nothing was changed: set out=NEW_FOLDER"
                )
    d = distributed.current()
    main = d.main  # the only process that writes the run folder
    removed = remove_leftover_temps(run) if main else []  # we are the only writer: files of killed writes can go
    if removed:
        logger.info("%s: removed %d temporary file(s) of interrupted writes", run, len(removed))

    seed_everything(cfg.seed)
    if cfg.train.deterministic:
        # cuBLAS repeats its sums only with a fixed workspace, which must be set before its first call (a process
        # that has used CUDA already keeps the one it had: PyTorch then warns)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = pick_device(cfg.train.device)
    if d.backend == "nccl":
        device = torch.device("cuda", d.local_rank)
    if device.type == "cpu":
        keep_freed_memory()  # activations reuse freed blocks instead of fresh zeroed pages every step
    manifest, splits, train_ds, select_ds, test_ds = prepare(cfg)
    classes = manifest.classes
    vocab = manifest.vocab
    model, extra = build_model(cfg, vocab)
    init_report = None
    if cfg.init.from_ and last is None:
        init_report = init_from(model, cfg, vocab)
    if d.enabled and cfg.train.sync_bn:
        if d.backend != "nccl":
            raise FparError("train.sync_bn=true needs GPUs (NCCL): PyTorch's SyncBatchNorm does not run on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters, statistics over every process
    dtype = amp_dtype(cfg, device)  # train.amp: decided (or refused) before anything is written
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    trainable = apply_trainable(model, resolve_trainable(cfg))
    for m in model.modules():  # train.checkpoint, train.frozen_chunk: every ResNet trunk (streams included)
        if isinstance(m, ResNetTrunk):
            m.checkpoint = cfg.train.checkpoint
            m.frozen_chunk = cfg.train.frozen_chunk if device.type == "cpu" else 0  # for the CPU's caches
    cache = FeatureCache.for_run(cfg, spec_of(cfg), model, manifest, trainable, device)
    memo = EvalMemo.for_run(cfg, spec_of(cfg), model, trainable)  # None with a cache: the cache serves evaluation
    model.to(device)
    if cfg.train.channels_last:
        to_channels_last(model)
    if cfg.train.compile:
        compile_model(model, spec_of(cfg))
    optimizer = make_optimizer(model, cfg)

    history: list[dict] = []
    chosen = select_metric(cfg)
    best = {"top1": -1.0, "epoch": 0, "selected_on": chosen}
    start = 0
    if last is None and (run / "config.yaml").is_file():  # every rank looks: none goes on alone
        # a run killed before its first checkpoint starts again here, with the config it had; another config (or
        # a file that is no config of fpar's) belongs to something else, whose record this run would replace
        try:
            same = (run / "config.yaml").read_text(encoding="utf-8") in (dump(cfg), as_given)
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            raise FparError(
                f"{run} holds a config.yaml of another run (or not of fpar's), and no checkpoint; nothing was changed: "
                "set out=NEW_FOLDER, or delete that folder to start this run there"
            )
    if last is not None:
        src = (last.get("config") or {}).get("model", {}).get("name", "?")
        if src != cfg.model.name or list(last.get("classes") or []) != list(classes):
            raise FparError(
                f"{last['path']} is a checkpoint of model '{src}' on {len(last.get('classes') or [])} classes, but "
                f"this run's config.yaml trains {cfg.model.name} on {len(classes)}: it does not belong to this run "
                "folder; restore the run's own last.pt or start a new run"
            )
        try:
            model.load_state_dict(last["model"])
        except RuntimeError:
            raise FparError(
                f"{last['path']} does not fit this run's config.yaml (a checkpoint of model '{src}' with other "
                "shapes): it does not belong to this run folder; restore the run's own last.pt or start a new run"
            ) from None
        optimizer.load_state_dict(last["optimizer"])
        if scaler is not None and last.get("scaler"):
            scaler.load_state_dict(last["scaler"])
        ranks = last.get("rng_ranks")
        if d.enabled and ranks and len(ranks) != d.world:
            logger.warning(
                "%s was saved by %d processes, resumed on %d: dropout draws differ", run, len(ranks), d.world
            )
        set_rng_state(ranks[d.rank] if d.enabled and ranks and len(ranks) == d.world else last["rng"])
        history = list(last["history"])
        best = dict(last["best"])
        start = int(last["epoch"])
        if main:
            save_config(cfg, run / "config.yaml")  # resume may change train.epochs, device, workers, data.root
            # the log holds exactly the epochs of last.pt (a crash after appending a row but before last.pt was
            # written would otherwise leave that epoch twice)
            atomic_write_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        log(f"resuming {run} after epoch {start}")
    elif main:
        save_config(cfg, run / "config.yaml")
        atomic_write_json(run / "provenance.json", provenance(manifest))
        (run / "metrics.jsonl").unlink(missing_ok=True)
    log(
        f"{cfg.name}: {cfg.model.name} on {manifest.root} ({manifest.layout} format): "
        f"{splits.describe(cfg.data)}; "
        f"{sum(p.numel() for n, p in model.named_parameters() if n in set(trainable)) / 1e6:.2f} M trainable "
        f"parameters; device {device}" + (f" x {d.world} processes ({d.backend})" if d.enabled else "")
    )
    if init_report:
        log(
            f"initialised from {init_report['from']} (epoch {init_report['epoch']}); new: {len(init_report['new'])} "
            "tensors"
        )

    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(run / "tb")) if main else None
    step = distributed.wrap(TrainStep(model, cfg, cache), device, find_unused=_find_unused(cfg, trainable, log))
    if cache is not None:
        log(cache.describe(model, train_ds, len(select_ds), cfg.train.epochs, device))
        for ds in {id(x): x for x in (train_ds, select_ds, test_ds) if x is not None}.values():
            ds.skip_rgb = cache.cached_draws()  # a clip whose features are cached is not decoded
    if memo is not None:
        log(
            f"evaluation memo: the evaluation clips' features of the frozen prefix up to {memo.plan.name} stay in "
            f"memory between epochs (up to {cfg.train.eval_memo_mb} MiB, train.eval_memo_mb)"
        )
        select_ds.skip_rgb = memo.held  # a clip whose features are held is not decoded
    select_loader = make_loader(select_ds, cfg, train=False)
    eval_prefix = cache if cache is not None else memo  # what serves the frozen prefix in evaluation (or None)
    base = {
        "config": to_dict(cfg),
        "classes": classes,
        "vocabulary": vocab.to_dict(),
        "data_format": manifest.layout,  # the reader ("format" is the checkpoint's own version)
        "input_size": cfg.data.input_size,
        "normalisation": normalisation(cfg),
        "trainable": trainable,
        **extra,
    }
    t_start = time.time()
    with BackgroundWriter() as writer:  # best.pt and last.pt go to disk while the next epoch trains
        for epoch in range(start, cfg.train.epochs):
            f = lr_factor(cfg, epoch)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * f
            train_ds.set_epoch(epoch)
            t0 = time.time()
            tr = train_one_epoch(
                model,
                make_loader(train_ds, cfg, train=True, epoch=epoch),
                optimizer,
                cfg,
                device,
                epoch=epoch,
                progress=progress,
                step=step,
                scaler=scaler,
            )
            writer.wait()  # the previous epoch's checkpoints are on disk before this epoch writes anything
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[-1]["lr"], **tr}
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
                ev = evaluate(model, select_loader, cfg, device, vocab, progress=progress, cache=eval_prefix)
                conf = ev.pop("confusion")
                if not math.isfinite(ev.get("loss", 0.0)):  # the same on every rank: the scores are gathered
                    raise FparError(
                        f"validation loss became {ev['loss']} at epoch {epoch + 1}: the weights diverged; lower "
                        "optim.lr (the run stops here; last.pt holds the previous epoch)"
                    )
                row.update({f"val_{k}": v for k, v in ev.items()})
                if chosen not in ev:
                    raise FparError(
                        f"train.select_metric={chosen} is not a metric of this run (it has {', '.join(sorted(ev))}); "
                        "choose one of those"
                    )
                if ev[chosen] > best.get(chosen, -1.0):  # strictly better, as the original selection
                    best = {"epoch": epoch + 1, "selected_on": chosen, **ev}
                    lock.check()
                    if main:
                        writer.save(
                            {**base, "model": model.state_dict(), "epoch": epoch + 1, "metrics": ev}, run / "best.pt"
                        )
                        if conf is not None:
                            _write_confusion(run / "confusion.csv", conf, classes)
            if cache is not None:
                hits, misses = cache.take_stats()
                row["cache_hit_rate"] = round(hits / max(hits + misses, 1), 4)  # clips read back / clips seen
            row["time_s"] = round(time.time() - t0, 2)
            history.append(row)
            rngs = distributed.gather(rng_state())  # every rank's: a resumed run draws what this one would have
            if main:
                with open(run / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            fault("metrics_appended")
            if tb is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        tb.add_scalar(k, v, epoch + 1)
            log(_epoch_line(row))
            lock.check()
            if not main:
                continue
            writer.save(
                {
                    **base,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "rng": rngs[0],
                    **({"rng_ranks": rngs} if d.enabled else {}),
                    **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                    "history": history,
                    "best": best,
                    "finished": epoch + 1 == cfg.train.epochs,
                },
                run / "last.pt",
            )
    if tb is not None:
        tb.close()
    if memo is not None:
        select_ds.skip_rgb = None  # the summary's test evaluation (select_on=val) decodes every clip
    lock.check()
    distributed.broadcast(None)  # every rank here: best.pt is on disk for the summary's test evaluation
    summary = _summary(cfg, run, history, best, splits, select_ds, test_ds, model, device, vocab, progress, cache)
    summary["train_time_s"] = round(time.time() - t_start, 1)
    if main:
        atomic_write_json(run / "summary.json", summary)
    return summary


def _epoch_line(row: dict) -> str:
    parts = [f"epoch {row['epoch']:>3}", f"loss {row['train_loss']:.3f}", f"train {row['train_top1']:.1f}%"]
    if "val_top1" in row:
        parts += [f"val {row['val_top1']:.1f}%", f"val loss {row['val_loss']:.3f}"]
    if "val_action_top1" in row:
        parts.append(
            f"val verb/noun/action {row['val_verb_top1']:.1f}/{row['val_noun_top1']:.1f}/{row['val_action_top1']:.1f}%"
        )
    for k, v in row.items():  # every auxiliary loss term the model returned (ms, disc, verb, noun, ...)
        if k.startswith("train_") and k.endswith("_loss") and k not in ("train_loss", "train_action_loss"):
            parts.append(f"{k[6:]} {v:.3f}")
    parts.append(f"{row['time_s']:.0f}s")
    return "  ".join(parts)


def _write_confusion(path: Path, conf: list[list[int]], classes: list[str]) -> None:
    lines = ["true\\pred," + ",".join(f'"{c}"' for c in classes)]
    lines += [f'"{c}",' + ",".join(str(x) for x in row) for c, row in zip(classes, conf)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _summary(cfg, run, history, best, splits, select_ds, test_ds, model, device, vocab, progress, cache=None) -> dict:
    evals = [h for h in history if "val_top1" in h]
    final = evals[-1] if evals else {}
    s = {
        "name": cfg.name,
        "model": cfg.model.name,
        "run": str(run),
        "best_top1": best["top1"],
        "best_epoch": best["epoch"],
        "final_top1": final.get("val_top1"),
        "top5": best.get("top5"),
        "mean_class_acc": best.get("mean_class_acc"),
        "verb_acc": best.get("verb_acc"),
        "noun_acc": best.get("noun_acc"),
        "pair_top1": best.get("pair_top1"),
        "pair_videos": best.get("pair_videos"),
        "videos": best.get("videos"),
        "select_on": splits.select_on,
        "selected_by": best.get("selected_on", "top1"),
        "split": splits.name,
        "epochs": cfg.train.epochs,
        "seed": cfg.seed,
    }
    for k, v in best.items():  # every other metric the format defines (verb/noun/action top-k, groups)
        if k not in s and k not in ("top1", "epoch", "selected_on", "loss") and isinstance(v, (int, float)):
            s[k] = v
    if splits.select_on == "val":
        # the epoch was chosen on held-out training videos: report the test subjects once, on that checkpoint
        ckpt = load_checkpoint(run, "best")
        model.load_state_dict(ckpt["model"])
        loader = make_loader(test_ds, cfg, train=False)
        ev = evaluate(model, loader, cfg, device, vocab, progress=progress, cache=cache)
        ev.pop("confusion")
        s.update({f"test_{k}": v for k, v in ev.items()})
    return s
