"""An exact cache of a frozen trunk's per-frame features (``data.feature_cache=DIR``): stage 1 without the trunk,
stage 2 without its frozen part.

Stage 1 trains the ConvLSTM and the classifier for hundreds of epochs over a trunk that never changes; stage 2
trains layer4 too, over a stem and layers 1-3 that never change. A family lists its cuts, deepest first
(`fpar.registry.FeatureCachePlan`; Ego-RNN: after the CAM at conv5, and after layer3), and a run caches the deepest
prefix it leaves frozen. A clip's trunk features depend only on the video, its frames (fixed by ``data.frames`` and
``data.sampling``) and the clip's crop/flip draw, of which there are 40 in training (`fpar.data.transforms.DRAWS`)
and one at test time. So they are computed once per (video, draw) as the draws occur, written to ``DIR``, and read
back whenever that draw recurs: after a few tens of epochs nearly every clip is a hit. ``data.draw_pool=K``
limits each video to K of its draws, each shown once per block of K epochs (another augmentation, fewer distinct
crops): the cache is then full after K epochs; its entries are the same files, so a pool and no pool share one folder.

Exact: the prefix (`fpar.registry.FeatureCachePlan.prefix`) runs on one clip at a time whether its features are
then written or read, and the file holds the very float32 values used (``data.feature_cache_dtype=float16``
halves the size and is approximate: the run then uses the rounded values, read or not). A run with a warm cache is
bit-identical to the same run with an empty one. Against a run without the cache, which puts the whole batch
through the trunk (``train.frozen_chunk`` frames per call), the features differ by float rounding only
(convolutions may sum in another order for another batch size), about 1e-6 relative.

Entries live under ``DIR/<fingerprint>/``, where the fingerprint hashes the prefix's weights, the model settings,
the frame geometry and the dataset's manifest: another trunk, size or dataset never reads stale features. Writes are
atomic (temporary file, then rename), so several processes (DataLoader-free: the trainer's, or DDP ranks) share DIR.

`EvalMemo` (``train.eval_memo_mb``, on by default) is the in-memory sibling for runs without ``DIR``: the same cuts,
for the evaluation clips only (and for runs whose training-only heads, such as Ego-RNN's MS head, keep the disk cache
away: the plan's ``eval_refusal``), computed batch by batch exactly as the family's forward does (bit-identical to
no memo at all), held from one epoch's evaluation to the next.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.transforms import DRAWS, normalize_rgb
from ..errors import FparError
from ..registry import FeatureCachePlan
from ..utils import sweep_stale_temporaries


def _fingerprint(cfg, model: torch.nn.Module, plan: FeatureCachePlan, manifest, device: str = "cpu") -> str:
    h = hashlib.sha256()
    pattern = re.compile("|".join(plan.params))
    for name, t in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        if pattern.search(name):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    d = cfg.data
    settings = {
        "model": cfg.model.name,
        "cut": plan.name,
        "block": repr(getattr(cfg.model, cfg.model.name, None)),
        "frames": d.frames,
        "sampling": d.sampling,
        "input_size": d.input_size,
        "scale_size": d.scale_size,
        "dtype": d.feature_cache_dtype,
        "data": manifest.fingerprint(),
        # the trunk's memory format and autocast change its float rounding (bit-identical warm = cold runs)
        "channels_last": cfg.train.channels_last,
        "amp": cfg.train.amp,
    }
    if device != "cpu":  # a GPU's kernels round otherwise (and autocast keeps other ops in fp32); CPU keys as before
        settings["device"] = device
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:20]


def _plans(spec) -> tuple[FeatureCachePlan, ...]:
    """A family's cuts, deepest first (its spec gives one plan or a tuple of them)."""
    return spec.feature_cache if isinstance(spec.feature_cache, tuple) else (spec.feature_cache,)


def _unusable(
    plan: FeatureCachePlan, cfg, model: torch.nn.Module, trainable: list[str], *, evaluation: bool = False
) -> str | None:
    """Why this run cannot cache ``plan``'s prefix (a one-line error), or None when it can. ``evaluation``: for the
    evaluation clips alone (the plan's ``eval_refusal`` where it has one)."""
    refusal = plan.eval_refusal if evaluation and plan.eval_refusal is not None else plan.refusal
    why = refusal(cfg) if refusal is not None else None
    if why:
        return f"data.feature_cache cannot be used here: {why}; remove the key for this run"
    pattern = re.compile("|".join(plan.params))
    trained = [n for n in trainable if pattern.search(n)]
    if trained:
        return (
            f"data.feature_cache needs a frozen trunk, but this stage trains {trained[0]} (and {len(trained) - 1} "
            "more): its features change every step. Use the cache for stages that freeze the trunk up to layer3 "
            "at least (Ego-RNN stages 1 and 2)"
        )
    modules = [m for m, _ in model.named_modules() if m and pattern.search(m + ".")]
    bn = [p for p in cfg.train.bn_train if any(re.search(p, m) for m in modules)]
    if bn:
        return f"data.feature_cache needs a frozen trunk, but train.bn_train={bn[0]!r} trains its BatchNorm"
    return None


def entry_path(directory: Path, video: int, draw: int) -> Path:
    """Where the features of video ``video`` (manifest index) under crop/flip draw ``draw`` are kept."""
    return directory / f"v{video:06d}" / f"d{draw + 1:02d}.npy"


class CachedDraws:
    """Picklable test, for DataLoader workers: are a clip's features in the cache folder (so its frames need no
    decoding)?"""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def __call__(self, video: int, draw: int) -> bool:
        return entry_path(self.dir, video, draw).is_file()


class FeatureCache:
    """The cache of one run (see the module docstring). ``forward`` replaces the family's forward."""

    def __init__(
        self,
        root: str | os.PathLike,
        plan: FeatureCachePlan,
        fingerprint: str,
        dtype: str = "float32",
        draws: int = DRAWS,
    ):
        self.plan = plan
        self.draws = draws  # distinct training draws a video can show: DRAWS, or data.draw_pool's K
        self.dir = Path(root) / fingerprint
        self.dtype = np.float16 if dtype == "float16" else np.float32
        self.hits = self.misses = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FparError(f"data.feature_cache={root}: cannot create {self.dir} ({e.strerror})") from None
        self.swept = sweep_stale_temporaries(self.dir, "v*/.*.tmp")

    @classmethod
    def for_run(
        cls, cfg, spec, model, manifest, trainable: list[str], device: torch.device | None = None
    ) -> FeatureCache | None:
        """The run's cache, or None without ``data.feature_cache``; a one-line error when the run cannot use one.
        ``device``: where the prefix will run (entries computed on a GPU are kept apart from the CPU's)."""
        if not cfg.data.feature_cache:
            return None
        if spec.feature_cache is None:
            raise FparError(
                f"data.feature_cache: model {cfg.model.name} has no frozen per-frame trunk to cache; remove the key"
            )
        plans = _plans(spec)
        why = None
        for plan in plans:  # deepest cut first: the first whose prefix this stage leaves frozen
            why = _unusable(plan, cfg, model, trainable)
            if why is None:
                fp = _fingerprint(cfg, model, plan, manifest, device.type if device is not None else "cpu")
                draws = cfg.data.draw_pool or DRAWS  # entries are keyed by draw: a pool needs no other folder
                return cls(cfg.data.feature_cache, plan, fp, cfg.data.feature_cache_dtype, draws)
        raise FparError(why)  # the shallowest cut's reason

    def expected_bytes(self, clip_shape: tuple[int, ...], train_videos: int, eval_videos: int, epochs: int) -> int:
        """The size when full: every draw of every training video that ``epochs`` can reach, one per test video."""
        per_clip = int(np.prod(clip_shape)) * np.dtype(self.dtype).itemsize
        return per_clip * (train_videos * min(self.draws, epochs) + eval_videos)

    def describe(self, model, train_ds, eval_videos: int, epochs: int, device: torch.device) -> str:
        """The log line before training: where the cache is and the size it can reach. The shape of one clip's
        entry is an existing entry's, or comes from one frame through the prefix in eval mode (no BatchNorm
        statistics move)."""
        frames = train_ds.cfg.frames
        entry = next(self.dir.glob("v*/d*.npy"), None)
        shape = None
        if entry is not None:  # a filled cache: the shape of an entry, without decoding a clip
            try:
                shape = tuple(np.load(entry, mmap_mode="r").shape)
            except (OSError, ValueError, EOFError):
                shape = None
        if shape is None:
            probe = normalize_rgb(train_ds[0]["rgb"][:1])
            was = model.training
            model.eval()
            with torch.no_grad():
                shape = (frames, *self.plan.prefix(model, probe.to(device)).shape[1:])
            model.train(was)
        size = self.expected_bytes(shape, len(train_ds), eval_videos, epochs) / 2**30
        return (
            f"feature cache {self.dir} (the frozen prefix up to {self.plan.name}): up to {size:.2f} GiB "
            f"({len(train_ds)} training videos x up to "
            f"{min(self.draws, epochs)} draws, {eval_videos} test videos; {shape} per clip)"
        )

    def _path(self, video: int, draw: int) -> Path:
        return entry_path(self.dir, video, draw)

    def cached_draws(self) -> CachedDraws:
        """The datasets' ``skip_rgb``: clips whose features are here are not decoded at all."""
        return CachedDraws(self.dir)

    def features(self, model, batch: dict, device: torch.device) -> torch.Tensor:
        """(B, T, ...) prefix features of a batch: read where cached, else computed one clip at a time and written."""
        out = []
        for i, (video, draw) in enumerate(zip(batch["index"].tolist(), batch["draw"].tolist())):
            path = self._path(video, draw)
            f = None
            if path.is_file():
                try:
                    f = torch.from_numpy(np.load(path).astype(np.float32, copy=False))
                    self.hits += 1
                except (OSError, ValueError, EOFError):
                    f = None  # a damaged entry is computed again
            if f is None and batch["rgb"][i] is None:  # the loader skipped decoding because the entry was there
                path.unlink(missing_ok=True)  # a damaged entry: the next run computes it again
                raise FparError(
                    f"feature cache entry {path} was there when its clip was loaded and is gone or damaged now (it "
                    "is removed); do not clean the cache while a run uses it, and run again (or --resume)"
                )
            if f is None:
                with torch.no_grad():
                    f = self.plan.prefix(model, batch["rgb"][i].to(device)).float().cpu()  # (T, ...)
                # C order, as np.load gives it back: the convolutions after it round the same either way (a
                # channels-last input, as the trunk leaves it, would sum in another order)
                arr = np.ascontiguousarray(f.numpy(), dtype=self.dtype)
                f = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))  # what is used is what is stored
                self._write(path, arr)
                self.misses += 1
            out.append(f)
        return torch.stack(out).to(device)  # (B, T, ...)

    def _write(self, path: Path, arr: np.ndarray) -> None:
        # Atomic (a reader sees no half entry) but not fsynced like `fpar.utils.atomic_write_bytes`: an entry is
        # recomputable, a damaged one is computed again, and thousands of fsyncs would cost what the cache saves.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
        os.replace(tmp, path)

    def forward(self, model, batch: dict, train: bool) -> Any:
        device = next(model.parameters()).device
        return self.plan.forward(model, self.features(model, batch, device), batch, train)

    def take_stats(self) -> tuple[int, int]:
        """(hits, misses) since the last call."""
        h, m = self.hits, self.misses
        self.hits = self.misses = 0
        return h, m


class EvalMemo:
    """The frozen prefix's features of the evaluation clips, kept in host memory from one epoch's evaluation to the
    next (``train.eval_memo_mb``; the on-disk cache, when a run has one, serves evaluation instead).

    A frozen-trunk stage evaluates the same clips (the test transform: one draw) through the same frozen prefix
    after every epoch, so only the first evaluation needs the trunk. Exact: each batch's features are computed as the
    family's own forward computes them, the whole batch at once (`FeatureCachePlan.prefix` on its B·T frames), and
    kept per batch; so an evaluation from the memo equals one without it bit for bit. What that rests on:

    * the prefix does not change: the key holds no weights, and `for_run` gives a memo only to a stage that trains
      none of the plan's parameters and no BatchNorm in it (`_unusable`, as for the on-disk cache);
    * the evaluation loader gives the same clips in the same batches every epoch, each clip once: no shuffling,
      and fpar's evaluation sampler under torchrun (`fpar.engine.distributed`) shards without padding. A batch that
      arrives with clips skipped (held) but is not held as a whole is an error, not a silent recomputation;
    * the family's ``plan.forward`` may modify its input: it always gets a copy of what is held.

    Up to ``budget`` bytes (per process): the batches beyond it are decoded and computed every time. A clip whose
    features are held is not decoded (`held` is the evaluation dataset's ``skip_rgb``).
    """

    def __init__(self, plan: FeatureCachePlan, budget: int):
        self.plan = plan
        self.budget = budget
        self.store: dict[tuple, torch.Tensor] = {}
        self.bytes = 0
        self.held = HeldClips()

    @classmethod
    def for_run(cls, cfg, spec, model, trainable: list[str]) -> EvalMemo | None:
        """The run's memo: the deepest cut whose prefix the stage leaves frozen, or None (no such cut, the memo
        turned off, or an on-disk feature cache that serves evaluation already)."""
        if cfg.train.eval_memo_mb <= 0 or cfg.data.feature_cache or spec.feature_cache is None:
            return None
        for plan in _plans(spec):
            if _unusable(plan, cfg, model, trainable, evaluation=True) is None:
                return cls(plan, cfg.train.eval_memo_mb * 2**20)
        return None

    def forward(self, model, batch: dict, train: bool) -> Any:
        """The family's evaluation forward, from the held features of this batch's clips when there are some."""
        key = (tuple(batch["index"].tolist()), tuple(batch["draw"].tolist()))
        device = next(model.parameters()).device
        held = self.store.get(key)
        if held is not None:
            feats = _copy(held, device)
        else:
            rgb = batch["rgb"]
            if not torch.is_tensor(rgb):
                # the loader skipped clips the memo held, yet not this batch of them: the batches changed
                raise FparError(
                    "train.eval_memo_mb: the evaluation batches changed between epochs (the memo holds other clips); "
                    "run again with train.eval_memo_mb=0 and report it"
                )
            b, t = rgb.shape[:2]
            f = self.plan.prefix(model, rgb.reshape(b * t, *rgb.shape[2:]))  # (B*T, ...) as the forward computes it
            feats = f.view(b, t, *f.shape[1:])  # (B, T, ...)
            size = feats.numel() * feats.element_size()
            if self.bytes + size <= self.budget:
                self.store[key] = _copy(feats, torch.device("cpu"))
                self.bytes += size
                self.held.add(zip(*key))
        return self.plan.forward(model, feats, batch, train)


def _copy(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device`` in storage of its own, with its strides (channels-last stays channels-last)."""
    out = t.detach().to(device)
    return out.clone() if out.data_ptr() == t.data_ptr() else out


class HeldClips:
    """Picklable test: does the memo hold this clip's features? Read live in the main process; DataLoader workers
    get a copy as the evaluation starts (the clips held by then)."""

    def __init__(self):
        self.clips: set[tuple[int, int]] = set()

    def add(self, clips) -> None:
        self.clips.update(clips)

    def __call__(self, video: int, draw: int) -> bool:
        return (video, draw) in self.clips
