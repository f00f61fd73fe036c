"""ResNet trunk with the no-BN output of the last block, weight loading and input-conv adaptation.

`ResNetTrunk` holds the modules of a torchvision ResNet under the torchvision names (``conv1``, ``bn1``, ``layer1`` ..
``layer4``, ``fc``), so its state dict is a torchvision state dict and a user model that stores the trunk as, say,
``resNet`` gets parameter names like ``resNet.layer4.2.conv1.weight``. The ImageNet ``fc`` is kept: the CAM uses it.

The one change from torchvision (reference-spec §1.1): the last block of ``layer4`` is run by hand so that, from the
same convs in one pass, we get both its normal output (``conv5`` = relu(bn2(c) + identity)) and its no-BN output
(``conv5_nobn`` = c + identity, no bn2, no ReLU), c being that block's last conv output. For Bottleneck blocks
(resnet50) c is the conv3 output and bn3 plays the role of bn2.

Weights are never downloaded (the target machines are offline): see `build_trunk`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fpar.errors import FparError

logger = logging.getLogger(__name__)

ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")
STAGES: tuple[str, ...] = ("stem", "conv2", "conv3", "conv4")  # outputs of stem, layer1, layer2, layer3
_STAGE_INDEX = {name: i for i, name in enumerate(STAGES)}

# Filenames of the same ImageNet weights in the older (pre-zipfile) serialisation, as cited by Ego-RNN
# (``resnet34-333f7ec4.pth``). Accepted in the hub cache as a fallback to the torchvision IMAGENET1K_V1 file.
_LEGACY_IMAGENET_FILES = {
    "resnet18": "resnet18-5c106cde.pth",
    "resnet34": "resnet34-333f7ec4.pth",
    "resnet50": "resnet50-19c8e357.pth",
}


def _check_arch(name: str) -> str:
    if name not in ARCHS:
        raise FparError(f"unknown backbone '{name}'; choose one of {', '.join(ARCHS)}")
    return name


class ResNetTrunk(nn.Module):
    """A torchvision ResNet (18/34/50) that also returns the no-BN output of its last block.

    Attributes: ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc`` (torchvision names and modules),
    ``name``, ``in_chans``, ``num_classes``, ``num_features`` (512 or 2048) and ``feature_channels``
    ({'conv3', 'conv4', 'conv5'} -> channels; x4 for Bottleneck).

    ``forward`` is `forward_features`. Random init is torchvision's (conv1 re-created with torchvision's Kaiming
    init when ``in_chans != 3``).
    """

    def __init__(self, name: str = "resnet34", *, in_chans: int = 3, num_classes: int = 1000):
        super().__init__()
        self.name = _check_arch(name)
        self.in_chans = int(in_chans)
        self.num_classes = int(num_classes)
        tv = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if in_chans != 3:
            conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's conv init
            tv.conv1 = conv1
        self.conv1 = tv.conv1
        self.bn1 = tv.bn1
        self.relu = tv.relu
        self.maxpool = tv.maxpool
        self.layer1 = tv.layer1
        self.layer2 = tv.layer2
        self.layer3 = tv.layer3
        self.layer4 = tv.layer4
        self.avgpool = tv.avgpool  # AdaptiveAvgPool2d(1): equals Ego-RNN's AvgPool2d(7) at 224 px (7x7 maps)
        self.fc = tv.fc
        last = self.layer4[-1]
        if not isinstance(last, (BasicBlock, Bottleneck)):  # pragma: no cover - torchvision always builds these
            raise TypeError(f"unsupported last block type {type(last).__name__}")
        self.bottleneck = isinstance(last, Bottleneck)
        expansion = 4 if self.bottleneck else 1
        self.num_features = 512 * expansion
        self.feature_channels = {"conv3": 128 * expansion, "conv4": 256 * expansion, "conv5": 512 * expansion}

    # ------------------------------------------------------------------------------------------------ pieces
    def stem(self, x: Tensor) -> Tensor:
        """conv1, bn1, relu, maxpool: (B, in_chans, H, W) -> (B, 64, H/4, W/4)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_to(self, x: Tensor, end: str) -> Tensor:
        """Run from the input up to and including stage ``end``: 'stem', 'conv2' (layer1), 'conv3' (layer2) or
        'conv4' (layer3); returns that stage's output."""
        if end not in _STAGE_INDEX:
            raise ValueError(f"end must be one of {STAGES}, got {end!r}")
        return self._part("_stages_to")(x, _STAGE_INDEX[end])

    def _stages_to(self, x: Tensor, layers: int) -> Tensor:
        """The stem, then the first ``layers`` of layer1..layer3."""
        x = self.stem(x)
        for layer in (self.layer1, self.layer2, self.layer3)[:layers]:
            x = layer(x)
        return x

    def _last_stage(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """layer4 with its last block run by hand: returns (conv5, conv5_nobn), each (B, num_features, h, w)."""
        for block in self.layer4[:-1]:
            x = block(x)
        blk = self.layer4[-1]
        identity = x if blk.downsample is None else blk.downsample(x)
        out = blk.relu(blk.bn1(blk.conv1(x)))
        if self.bottleneck:
            out = blk.relu(blk.bn2(blk.conv2(out)))
            c = blk.conv3(out)
            bn_last = blk.bn3
        else:
            c = blk.conv2(out)
            bn_last = blk.bn2
        nobn = c + identity  # no BN, no ReLU (Ego-RNN's feature_convNBN)
        conv5 = blk.relu(bn_last(c) + identity)  # the block's normal output (feature_conv)
        return conv5, nobn

    def logits_from(self, conv5: Tensor) -> Tensor:
        """fc(avgpool(conv5)): (B, num_features, h, w) -> (B, num_classes)."""
        return self.fc(torch.flatten(self.avgpool(conv5), 1))

    # ------------------------------------------------------------------------------------------------ forwards
    def forward_from(self, x: Tensor, start: str) -> dict[str, Tensor]:
        """Run the rest of the network from the output of stage ``start``.

        ``start='conv3'``: x is a layer2-shaped output (B, feature_channels['conv3'], H/8, W/8); runs layer3 and
        layer4 and returns {'conv4', 'conv5', 'conv5_nobn', 'logits'}. ``start='conv4'``: x is layer3-shaped; returns
        {'conv5', 'conv5_nobn', 'logits'}. The input itself is not repeated in the dict.
        """
        out: dict[str, Tensor] = {}
        if start == "conv3":
            x = self._part("_layer3")(x)
            out["conv4"] = x
        elif start != "conv4":
            raise ValueError(f"start must be 'conv3' or 'conv4', got {start!r}")
        conv5, nobn = self._part("_last_stage")(x)
        out["conv5"] = conv5
        out["conv5_nobn"] = nobn
        out["logits"] = self._part("logits_from")(conv5)
        return out

    def _layer3(self, x: Tensor) -> Tensor:
        return self.layer3(x)

    # Activation checkpointing (``train.checkpoint``, set by the engine): with gradients to compute, the trunk keeps
    # only its inputs and the maps it returns, and recomputes the rest in backward, ``checkpoint_chunk`` frames at a
    # time (the peak of the recomputation). Chunks of frozen-BN frames give the same values up to float rounding.
    checkpoint: bool = False
    checkpoint_chunk: int = 32

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """(B, in_chans, H, W) -> {'conv3': layer2 out, 'conv4': layer3 out, 'conv5': layer4 out (BN+ReLU),
        'conv5_nobn': last block without its last BN and ReLU, 'logits': (B, num_classes)}.

        At 224 px: conv3 (B,128,28,28), conv4 (B,256,14,14), conv5 / conv5_nobn (B,512,7,7) for resnet18/34.
        """
        if self.checkpoint and torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            from torch.utils.checkpoint import checkpoint

            chunks = [x] if _bn_trains(self) else list(x.split(self.checkpoint_chunk))  # BN statistics need the batch
            return _cat_frames([checkpoint(self._features, c, use_reentrant=False) for c in chunks])
        return self._features(x)

    # Frames in chunks where the trunk records nothing for backward (``frozen_chunk`` frames at a time, set by the
    # engine from ``train.frozen_chunk``; 0: all at once). A frozen trunk's B·T frames go through 8 at a time
    # rather than 128 at once, so each layer's maps stay in the CPU's caches: at 128 frames and 224 px, conv1's map
    # alone is 411 MB, and the BN, ReLU, pooling and residual adds are passes over memory. The trunk's forward was
    # 1.23x faster that way on 2 cores (benchmarks/bench_trunk_chunk.py). Where the whole trunk is frozen, the
    # convolutions run in chunks and the fc once on all of conv5; where only the stem to layer3 is (Ego-RNN's
    # stage 2), that prefix runs in chunks and layer4 on the whole batch. Frozen (eval-mode) BN works frame by
    # frame, so the values are the same up to float rounding (bit-equal in that benchmark); with a BN that
    # trains, or a graph to record, the batch goes through whole.
    frozen_chunk: int = 0

    def _records_nothing(self, x: Tensor, modules: tuple[nn.Module, ...]) -> bool:
        """True when ``modules`` run on ``x`` frame by frame without a graph: no BN in train mode and no tensor
        that requires grad (or grad mode off)."""
        if any(_bn_trains(mod) for mod in modules):
            return False  # batch statistics: a chunk would normalise with other numbers
        if not torch.is_grad_enabled():
            return True
        return not x.requires_grad and not any(p.requires_grad for mod in modules for p in mod.parameters())

    def _features(self, x: Tensor) -> dict[str, Tensor]:
        chunk = self.frozen_chunk
        chunked = x.shape[0] > chunk > 0
        prefix = (self.conv1, self.bn1, self.layer1, self.layer2, self.layer3)
        if chunked and self._records_nothing(x, (self,)):
            out = _cat_frames([self._convs(c) for c in x.split(chunk)])  # each map (B·T, C, h, w)
        elif chunked and self._records_nothing(x, prefix):
            out = self._from_conv4(_cat_frames([self._part("_to_conv4")(c) for c in x.split(chunk)]))  # layer4 whole
        else:
            out = self._convs(x)
        out["logits"] = self._part("logits_from")(out["conv5"])  # (B·T, num_classes): one fc on every frame
        return out

    def _to_conv4(self, x: Tensor) -> dict[str, Tensor]:
        """(N, in_chans, H, W) -> {'conv3': layer2 output, 'conv4': layer3 output}."""
        conv3 = self.layer2(self.layer1(self.stem(x)))
        return {"conv3": conv3, "conv4": self.layer3(conv3)}

    def _from_conv4(self, maps: dict[str, Tensor]) -> dict[str, Tensor]:
        """Adds layer4's 'conv5' and 'conv5_nobn' (from ``maps['conv4']``) to ``maps``; returns it."""
        maps["conv5"], maps["conv5_nobn"] = self._part("_last_stage")(maps["conv4"])
        return maps

    def _convs(self, x: Tensor) -> dict[str, Tensor]:
        """The trunk's maps without the fc: {'conv3', 'conv4', 'conv5', 'conv5_nobn'}."""
        return self._from_conv4(self._part("_to_conv4")(x))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)

    # ------------------------------------------------------------------------------------------------ compile
    # The pieces `compile` compiles, each a method of its own: the entries above call them through `_part`.
    _COMPILED = ("_to_conv4", "_stages_to", "_layer3", "_last_stage", "logits_from")

    def compile(self, *args, **kwargs) -> None:
        """``train.compile`` for a trunk: ``torch.compile`` of the pieces its entries run, in place.

        The families enter a trunk through `forward_features`, `forward_to` and `forward_from`, never through
        ``__call__``, so `nn.Module.compile`'s way (compiling ``__call__``) would leave every frame eager; and
        compiling its submodules one by one would not do either: they share ``nn.Module.__call__``'s code, whose
        compiled versions dynamo caps at 8 (``recompile_limit``), so that all but the first few would run eager.
        The pieces are the trunk's own methods instead (stem to layer3, layer3, layer4, the fc: `_COMPILED`), each
        a code object of its own; the chunking and checkpointing around them stay eager Python. Parameter names
        and state dicts do not change; a deep copy is not compiled (as with `nn.Module.compile`)."""
        self._compiled_parts = {name: torch.compile(getattr(self, name), *args, **kwargs) for name in self._COMPILED}

    def _part(self, name: str):
        """The method ``name``, compiled once `compile` has run."""
        parts = self.__dict__.get("_compiled_parts")
        return parts[name] if parts else getattr(self, name)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_compiled_parts", None)  # bound to this trunk: a copy (deepcopy, pickle) starts uncompiled
        return state

    # ------------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def fold_batchnorm(self) -> int:
        """Fold every BatchNorm into the convolution before it, for inference; returns how many were folded.

        In eval mode BN is the affine map y = (x - mean) / sqrt(var + eps) * gamma + beta, so conv then BN is one
        conv with weight w * s and bias beta - mean * s (s = gamma / sqrt(var + eps) per output channel): the same
        function, one pass over memory less per BN (the outputs agree to float rounding, tests/test_models.py).
        The last block's last BN stays: ``conv5_nobn`` is that conv's output before it. Folded BNs become
        ``nn.Identity``, so the state dict no longer loads into an unfolded trunk: fold a copy made for inference,
        never a model that is trained or saved.

        Raises:
            RuntimeError: a BN is in training mode (its batch statistics are not a fixed affine map).
        """
        if _bn_trains(self):
            raise RuntimeError("fold_batchnorm needs every BatchNorm in eval mode: call model.eval() first")

        def fold(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (O,)
            conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            shift = bn.bias - bn.running_mean * scale  # (O,)
            if conv.bias is None:
                conv.bias = nn.Parameter(shift.clone(), requires_grad=conv.weight.requires_grad)
            else:
                conv.bias.copy_(conv.bias * scale + shift)

        folded = 0
        if isinstance(self.bn1, nn.modules.batchnorm._BatchNorm):
            fold(self.conv1, self.bn1)
            self.bn1 = nn.Identity()
            folded += 1
        blocks = [b for layer in (self.layer1, self.layer2, self.layer3, self.layer4) for b in layer]
        for blk in blocks:
            pairs = [("conv1", "bn1"), ("conv2", "bn2")] + ([("conv3", "bn3")] if self.bottleneck else [])
            if blk is blocks[-1]:
                pairs = pairs[:-1]  # its last conv's raw output is conv5_nobn
            for conv_name, bn_name in pairs:
                bn = getattr(blk, bn_name)
                if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                    fold(getattr(blk, conv_name), bn)
                    setattr(blk, bn_name, nn.Identity())
                    folded += 1
            ds = blk.downsample
            if ds is not None and len(ds) == 2 and isinstance(ds[1], nn.modules.batchnorm._BatchNorm):
                fold(ds[0], ds[1])
                ds[1] = nn.Identity()
                folded += 1
        return folded


def _bn_trains(module: nn.Module) -> bool:
    """Whether a BatchNorm inside ``module`` is in train mode (batch statistics: its output depends on the batch)."""
    return any(m.training for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def _cat_frames(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Maps computed chunk by chunk, joined back along the frame dimension (one chunk: as it is)."""
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if len(parts) > 1 else parts[0]


def fold_batchnorm(model: nn.Module) -> int:
    """`ResNetTrunk.fold_batchnorm` on every trunk inside ``model`` (eval mode); returns the BNs folded. For
    inference copies only (see there)."""
    return sum(m.fold_batchnorm() for m in model.modules() if isinstance(m, ResNetTrunk))


# ---------------------------------------------------------------------------------------------------------- helpers
def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """Ego-RNN's flow init of conv1 (reference-spec §2): (O, C, k, k) -> (O, in_chans, k, k).

    The weight is averaged over its input channels (RGB for an ImageNet conv1) and that mean is repeated
    ``in_chans`` times, with no rescaling (so the response to a constant input grows with in_chans, as in the
    original). The same rule applies for every channel count: ``in_chans=1`` gives the mean, and ``in_chans=3``
    gives the mean repeated three times, *not* the original weight. Returns a new tensor of the same dtype.
    """
    if weight.dim() != 4:
        raise ValueError(f"expected a conv weight (O, C, k, k), got shape {tuple(weight.shape)}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    mean = weight.mean(dim=1, keepdim=True)  # (O, 1, k, k)
    return mean.repeat(1, in_chans, 1, 1).contiguous()  # (O, in_chans, k, k)


def set_batchnorm_eval(module: nn.Module) -> nn.Module:
    """Put every BatchNorm in ``module`` in eval mode (running stats used and not updated); returns ``module``.

    ``module.train()`` undoes this, so call it again after every ``train()``. It does not touch ``requires_grad``.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return module


def unwrap_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    """Accept a plain state dict, or one nested under 'state_dict' / 'model'; strip a 'module.' prefix."""
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, Mapping) or not obj:
        raise FparError(f"{source} does not hold a state dict (a mapping of parameter names to tensors)")
    sd: dict[str, Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            continue  # e.g. stray metadata entries next to the tensors
        k = str(k)
        if k.startswith("module."):
            k = k[len("module.") :]
        sd[k] = v
    if not sd:
        raise FparError(f"{source} does not hold a state dict (a mapping of parameter names to tensors)")
    return sd


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_torchvision_state_dict(trunk: ResNetTrunk, state_dict: Mapping[str, Tensor], *, source: str) -> None:
    """Copy a torchvision-format ResNet state dict into ``trunk``, in place.

    * conv1: if the checkpoint has 3 input channels and the trunk another count, it is adapted with
      `adapt_input_conv`; if it already has the trunk's count it is copied.
    * fc: if its shape differs from the trunk's (``num_classes``), it is skipped with a warning (left at its init).
    * ``num_batches_tracked`` buffers may be missing (checkpoints from old PyTorch versions lack them).
    * any other missing, unexpected or mis-shaped key raises `FparError` naming ``source`` and a few keys.
    """
    sd = unwrap_state_dict(state_dict, source)
    own = trunk.state_dict()

    w = sd.get("conv1.weight")
    if w is not None and w.shape != own["conv1.weight"].shape:
        if w.dim() == 4 and w.shape[1] == 3 and w.shape[0] == own["conv1.weight"].shape[0]:
            sd["conv1.weight"] = adapt_input_conv(w, trunk.in_chans)
            logger.info("%s: conv1 adapted from 3 to %d input channels (RGB mean, repeated)", source, trunk.in_chans)
    fc_w = sd.get("fc.weight")
    # Skip the fc only when it is a classifier over the same features with another class count; an fc over other
    # features (another depth) is reported as a mismatch below.
    fc_skipped = (
        fc_w is not None
        and fc_w.dim() == 2
        and fc_w.shape[1] == own["fc.weight"].shape[1]
        and any(k in sd and sd[k].shape != own[k].shape for k in ("fc.weight", "fc.bias"))
    )
    if fc_skipped:
        logger.warning(
            "%s: fc has shape %s but the trunk has %d classes; fc left at its random init",
            source,
            tuple(sd["fc.weight"].shape) if "fc.weight" in sd else "?",
            trunk.num_classes,
        )
        sd.pop("fc.weight", None)
        sd.pop("fc.bias", None)

    expected = set(own) - ({"fc.weight", "fc.bias"} if fc_skipped else set())
    missing = sorted(k for k in expected - set(sd) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(sd) - set(own))
    mis_shaped = sorted(k for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if mis_shaped:
            parts.append(
                "shape mismatch: " + _few([f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in mis_shaped], 3)
            )
        raise FparError(
            f"{source} is not a torchvision {trunk.name} ImageNet state dict ({'; '.join(parts)}); "
            f"pass weights saved from torchvision.models.{trunk.name}, 'imagenet' or 'none'"
        )
    trunk.load_state_dict(sd, strict=False)  # strict=False only for the optional keys checked above


def load_weights_file(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickles before refusing them: our line says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with arbitrary objects, not a torch file at all
        # torch's own message suggests weights_only=False, i.e. running arbitrary code: never do that here
        raise FparError(
            f"cannot read pretrained weights {path} ({type(e).__name__}): it is corrupt, not a torch file, or holds "
            "Python objects beyond tensors; give a plain state dict (torch.save(model.state_dict(), path))"
        ) from None


def imagenet_checkpoint_path(name: str) -> Path:
    """Where torchvision's IMAGENET1K_V1 file for ``name`` sits in the torch hub cache (it may not exist)."""
    url = torchvision.models.get_model_weights(_check_arch(name)).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def build_trunk(
    name: str = "resnet34", *, pretrained: str | None = None, in_chans: int = 3, num_classes: int = 1000
) -> ResNetTrunk:
    """Build a `ResNetTrunk` and optionally load ImageNet weights, never downloading anything.

    ``pretrained``:
      * None or 'none': torchvision's random init.
      * 'imagenet': torchvision's IMAGENET1K_V1 file, read from ``torch.hub.get_dir()/checkpoints/<file>`` (e.g.
        ``resnet34-b627a593.pth``; the legacy ``resnet34-333f7ec4.pth`` of the same weights is accepted too). If it is
        not there, `FparError` says which file to place where.
      * any other string: a local file with a torchvision-format state dict (optionally nested under 'state_dict'
        or 'model', optional 'module.' prefix).

    With ``in_chans != 3`` the RGB conv1 is adapted by `adapt_input_conv`; with ``num_classes`` different from the
    checkpoint's fc, the fc keeps its init and a warning is logged.
    """
    trunk = ResNetTrunk(name, in_chans=in_chans, num_classes=num_classes)
    if pretrained is None or str(pretrained).strip().lower() in ("", "none"):
        return trunk

    if str(pretrained).strip().lower() == "imagenet":
        path = imagenet_checkpoint_path(name)
        if not path.is_file():
            legacy = path.parent / _LEGACY_IMAGENET_FILES[name]
            if legacy.is_file():
                path = legacy
            else:
                url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
                raise FparError(
                    f"ImageNet weights for {name} are not in the torch hub cache: place {path.name} (from {url}) at "
                    f"{path}, or pass a local weights file path, or pretrained=none (this tool never downloads)"
                )
        source = f"ImageNet weights {path}"
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            url = torchvision.models.get_model_weights(name).IMAGENET1K_V1.url
            raise FparError(
                f"pretrained weights file not found: {path}; copy a torchvision {name} state dict there "
                f"(e.g. {Path(url).name} from {url}), or use pretrained=imagenet (hub cache) or none"
            )
        source = f"pretrained weights {path}"

    load_torchvision_state_dict(trunk, load_weights_file(path), source=source)
    logger.info("loaded %s into %s (in_chans=%d, num_classes=%d)", source, name, in_chans, num_classes)
    return trunk


def resolve_backbone_classes(model_cfg) -> int:
    """Classes of the trunk's own fc (what the CAM reads): ``model.backbone_classes``, else from the pretrained file's
    ``fc.weight`` when it is a file, else ImageNet's 1000."""
    if model_cfg.backbone_classes > 0:
        return model_cfg.backbone_classes
    p = model_cfg.pretrained
    if p and p.lower() not in ("none", "imagenet") and Path(p).is_file():
        try:
            sd = unwrap_state_dict(load_weights_file(Path(p)), p)
        except FparError:
            return 1000  # build_trunk reports the bad file with its own message
        if "fc.weight" in sd:
            return int(sd["fc.weight"].shape[0])
    return 1000
