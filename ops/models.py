"""The video models: the TSN wrapper (Wang et al., ECCV 2016) with temporal shift (TSM) and
region-based non-local blocks, and the inflated 3-D ResNet (I3D) with non-local blocks.

TSN: the backbone sees a clip of ``T = num_segments`` frames as a batch of images
``[N*T, C, H, W]``; per-frame logits ``[N, T, K]`` are averaged over time (the consensus). The
constructor keeps TSM's keyword names so research code written against TSM/RNL keeps working,
and the module tree gives the published state_dict layout (``base_model.*``, ``new_fc.*``).

I3D: the same clips ``[N, T*3, H, W]`` become ``[N, 3, T, H, W]`` for a 3-D ResNet
(``archs/i3d.py``). ``build_model(**keywords)`` returns the one ``base_model`` names; both share
``VideoModel`` (sizes, augmentation, partial BN, optimizer groups, ``model_config()``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from archs import ARCHS, RESNETS, build_backbone
from archs.i3d import I3D_ARCHS
from archs.mobilenet_v2 import InvertedResidual
from ops import mmaction_compat
from ops.checkpoint import read_torch_file
from ops.non_local import NonLocalWrapper, attached_parts, block_settings, make_non_local
from ops.param_groups import check_param_groups, param_groups
from ops.recompute import RECOMPUTED, RECOMPUTED_NETS, keep_attention, keep_block_outputs
from ops.temporal_shift import TemporalPool, TemporalShift, make_temporal_shift
from ops.transforms import GroupMultiScaleCrop, GroupRandomHorizontalFlip

logger = logging.getLogger(__name__)

MODALITIES = ("RGB", "Flow")
# TSN keywords that `model_config()` records (with `base_model`): what the weights were made for.
MODEL_SETTINGS = (
    "num_class", "num_segments", "modality", "new_length", "consensus_type", "before_softmax",
    "dropout", "is_shift", "shift_div", "shift_place", "temporal_pool", "non_local", "nl_type",
    "nl_where", "nl_options", "input_size",
)  # fmt: skip
CONSENSUS = ("avg", "identity")


class VideoModel(nn.Module):
    """What the engine and the tools use of a clip classifier, shared by ``TSN`` and ``I3D``:
    crop and resize sizes, the training augmentation, partial BN, the optimizer groups. A
    subclass sets ``input_size``, ``modality``, ``fc_lr5``, ``base_model`` (with
    ``last_layer_name``) and ``new_fc`` (None: the classifier is the backbone's last layer)."""

    # GroupMultiScaleCrop's settings of the training augmentation (TSN's)
    train_crop: dict = dict(scales=[1, 0.875, 0.75, 0.66], max_distort=1, more_fix_crop=True)

    # ---- sizes and augmentation ----------------------------------------------------------
    @property
    def crop_size(self) -> int:
        return self.input_size

    @property
    def scale_size(self) -> int:
        return self.input_size * 256 // 224

    def get_augmentation(self, flip: bool = True) -> torchvision.transforms.Compose:
        """Training augmentation: multi-scale crop (+ horizontal flip unless ``flip=False``)."""
        crop = GroupMultiScaleCrop(self.input_size, **self.train_crop)
        if not flip:
            return torchvision.transforms.Compose([crop])
        return torchvision.transforms.Compose(
            [crop, GroupRandomHorizontalFlip(is_flow=self.modality == "Flow")]
        )

    # ---- partial BN and optimiser groups ----------------------------------------------------
    def partialBN(self, enable: bool) -> None:  # noqa: N802 (TSM's name)
        """Partial BN (TSN): every BN of the backbone but the first keeps its ImageNet statistics
        (eval mode in training) and its affine parameters stay frozen (``requires_grad=False``,
        so they are in no optimizer group). BNs of the attached blocks always train."""
        self._enable_pbn = enable
        for bn in self._backbone_bns()[1:]:
            for p in bn.parameters():
                p.requires_grad_(not enable)

    def _backbone_bns(self) -> list[_BatchNorm]:
        """BN layers of the backbone proper (not inside attached blocks), in module order."""
        parts = set()
        for part in attached_parts(self).values():
            parts.update(id(m) for m in part.modules())
        return [m for m in self.modules() if isinstance(m, _BatchNorm) and id(m) not in parts]

    def train(self, mode: bool = True) -> VideoModel:
        """Train mode; with partial BN the frozen backbone BNs stay in eval mode."""
        super().train(mode)
        if self._enable_pbn and mode:
            for bn in self._backbone_bns()[1:]:
                bn.eval()
        return self

    def get_optim_policies(self) -> list[dict]:
        """Optimizer parameter groups (TSM's name), each with ``lr_mult`` and ``decay_mult``:
        the rules of ``ops/param_groups.py``, checked to hold every trainable parameter once."""
        classifier = (
            self.new_fc
            if self.new_fc is not None
            else getattr(self.base_model, self.base_model.last_layer_name)
        )
        groups = param_groups(self, classifier, self.fc_lr5, flow=self.modality == "Flow")
        check_param_groups(self, groups)
        return groups


class TSN(VideoModel):
    """Temporal Segment Network with optional temporal shift and non-local blocks.

    Args (TSM's names): num_class, num_segments, modality ('RGB' or 'Flow'), base_model
    (resnet18/34/50/101/152, mobilenetv2), new_length (frames per segment; 1 for RGB, 5 for Flow by
    default), consensus_type ('avg' or 'identity'), before_softmax, dropout (0 replaces the
    backbone's fc; otherwise fc becomes Dropout and ``new_fc`` follows), img_feature_dim and crop_num
    (accepted for compatibility, unused), partial_bn, print_spec (log the configuration),
    pretrain ('imagenet', 'scratch' or a backbone state_dict path), is_shift, shift_div,
    shift_place ('blockres' or 'block'), fc_lr5, temporal_pool, non_local.

    Our additions: nl_type / nl_where / nl_options (which block to attach, where, and its
    settings, e.g. the RNL region kernels; see ops/non_local.py), rnl_fused (fused attention; False
    is the published explicit computation), region_impl ('depthwise' or the published 'masked'),
    shift_recompute (re-shift in the backward instead of keeping the shifted copy; same results,
    less memory), recompute (recompute BatchNorm/ReLU
    outputs, the shift and the attached blocks' cheap parts in the backward instead of keeping
    them; same results, less memory; see ops/recompute.py), checkpoint_blocks (recompute whole
    residual blocks: least memory, about one more backbone forward of time) and input_size (crop size; 224 as published). The fast-path switches (rnl_fused,
    region_impl, shift_recompute, recompute, checkpoint_blocks) never change the result, so ``model_config()`` leaves them out.
    """

    def __init__(
        self,
        num_class: int,
        num_segments: int,
        modality: str,
        base_model: str = "resnet101",
        new_length: int | None = None,
        consensus_type: str = "avg",
        before_softmax: bool = True,
        dropout: float = 0.8,
        img_feature_dim: int = 256,
        crop_num: int = 1,
        partial_bn: bool = True,
        print_spec: bool = True,
        pretrain: str = "imagenet",
        is_shift: bool = False,
        shift_div: int = 8,
        shift_place: str = "blockres",
        fc_lr5: bool = False,
        temporal_pool: bool = False,
        non_local: bool = False,
        nl_type: str = "rnl",
        nl_where: Sequence[str] | str | None = None,
        rnl_fused: bool = True,
        region_impl: str = "depthwise",
        shift_recompute: bool = True,
        recompute: bool = True,
        checkpoint_blocks: bool = False,
        nl_options: dict | None = None,
        input_size: int = 224,
    ):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}: choose one of {MODALITIES}")
        if consensus_type not in CONSENSUS:
            raise ValueError(f"unknown consensus {consensus_type!r}: choose one of {CONSENSUS}")
        if base_model not in ARCHS:
            raise ValueError(f"unknown base model {base_model!r}: choose one of {', '.join(ARCHS)}")
        if not before_softmax and consensus_type != "avg":
            raise ValueError("only avg consensus can be used after softmax")
        if temporal_pool and num_segments % 2:
            raise ValueError(
                f"--temporal_pool needs an even number of segments, got {num_segments}"
            )
        if isinstance(nl_where, str):
            nl_where = [w for w in nl_where.split(",") if w]
        self.num_class = num_class
        self.num_segments = num_segments
        self.modality = modality
        self.base_model_name = base_model
        self.new_length = new_length if new_length is not None else (1 if modality == "RGB" else 5)
        self.consensus_type = consensus_type
        self.before_softmax = before_softmax
        self.dropout = dropout
        self.img_feature_dim = img_feature_dim
        self.crop_num = crop_num
        self.pretrain = pretrain
        self.is_shift = is_shift
        self.shift_div = shift_div
        self.shift_place = shift_place
        self.fc_lr5 = fc_lr5
        self.temporal_pool = temporal_pool
        self.non_local = non_local
        self.nl_type = nl_type
        self.nl_where = list(nl_where) if nl_where else None
        self.rnl_fused = rnl_fused
        self.region_impl = region_impl
        self.shift_recompute = shift_recompute
        self.recompute = recompute
        self.checkpoint_blocks = checkpoint_blocks
        # The block's settings, its defaults filled in: a checkpoint rebuilds the same block even
        # after a default changes in the block's file.
        self.nl_options = block_settings(nl_type, nl_options) if non_local else {}
        self.input_size = input_size
        self.input_mean = [0.485, 0.456, 0.406]
        self.input_std = [0.229, 0.224, 0.225]
        if modality == "Flow":
            self.input_mean = [0.5]
            self.input_std = [float(np.mean(self.input_std))]

        self._prepare_base_model()
        self._prepare_tsn()
        if modality == "Flow":
            self._make_flow_input()
        self.partialBN(partial_bn)
        if print_spec:
            logger.info(
                "TSN: base %s, %s, %d segments x %d frames, consensus %s, dropout %s, shift %s, non-local %s",
                base_model,
                modality,
                num_segments,
                self.new_length,
                consensus_type,
                dropout,
                f"1/{shift_div} {shift_place}" if is_shift else "off",
                f"{nl_type} at {','.join(self.nl_where) if self.nl_where else 'default places'}"
                if non_local
                else "off",
            )

    # ---- construction -------------------------------------------------------------------
    def _prepare_base_model(self) -> None:
        pretrain = self.pretrain
        if pretrain not in ("imagenet", "scratch", ""):  # a file
            pretrain = read_backbone_weights(self.pretrain)
        self.base_model = build_backbone(self.base_model_name, pretrain, source=self.pretrain)
        if self.base_model_name in RESNETS:
            self.base_model.last_layer_name = "fc"
            if self.is_shift:
                make_temporal_shift(
                    self.base_model,
                    self.num_segments,
                    n_div=self.shift_div,
                    place=self.shift_place,
                    temporal_pool=self.temporal_pool,
                    recompute=self.shift_recompute,
                )
            if self.non_local:
                make_non_local(
                    self.base_model, self.num_segments, nl_type=self.nl_type, where=self.nl_where,
                    temporal_pool=self.is_shift and self.temporal_pool,
                    fused=self.rnl_fused, region_impl=self.region_impl,  # fast paths
                    **self.nl_options,  # the block's settings
                )  # fmt: skip
            if self.recompute or self.checkpoint_blocks:
                make_recompute(self.base_model, checkpoint_blocks=self.checkpoint_blocks)
        else:  # mobilenetv2: shift the first conv of residual inverted-residual blocks (TSM)
            self.base_model.last_layer_name = "classifier"
            if self.non_local:
                raise ValueError("non-local blocks are only available for ResNet backbones")
            if self.is_shift:
                for m in self.base_model.modules():
                    if isinstance(m, InvertedResidual) and len(m.conv) == 8 and m.use_res_connect:
                        m.conv[0] = TemporalShift(
                            m.conv[0], n_segment=self.num_segments, n_div=self.shift_div
                        )
        self.base_model.avgpool = nn.AdaptiveAvgPool2d(1)

    def _prepare_tsn(self) -> None:
        name = self.base_model.last_layer_name
        feature_dim = getattr(self.base_model, name).in_features
        if self.dropout == 0:
            setattr(self.base_model, name, nn.Linear(feature_dim, self.num_class))
            self.new_fc = None
            fc = getattr(self.base_model, name)
        else:
            setattr(self.base_model, name, nn.Dropout(p=self.dropout))
            self.new_fc = fc = nn.Linear(feature_dim, self.num_class)
        nn.init.normal_(fc.weight, 0, 0.001)
        nn.init.zeros_(fc.bias)

    def _make_flow_input(self) -> None:
        """First conv takes ``2 * new_length`` flow channels: the RGB kernel averaged over its inputs."""
        conv = (
            self.base_model.conv1
            if hasattr(self.base_model, "conv1")
            else self.base_model.features[0][0]
        )
        channels = 2 * self.new_length
        new = nn.Conv2d(
            channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).expand_as(new.weight))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        if hasattr(self.base_model, "conv1"):
            self.base_model.conv1 = new
        else:
            self.base_model.features[0][0] = new

    def model_config(self) -> dict:
        """The model settings: the constructor keywords (plain types) that rebuild this network
        with ``TSN(**cfg)``; checkpoints store them. Training-only switches (partial BN, fc lr x5)
        and the fast paths, which never change the result, are not settings."""
        cfg = {key: copy.deepcopy(getattr(self, key)) for key in MODEL_SETTINGS}
        cfg["base_model"] = self.base_model_name
        return cfg

    def to_channels_last(self) -> TSN:
        """Store the 2-D conv weights channels-last (``--channels_last``); ``Module.to(memory_format=
        torch.channels_last)`` refuses the 5-D weights of the non-local parts, which stay as they are."""
        for p in self.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
        return self

    # ---- forward --------------------------------------------------------------------------
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        channels = (3 if self.modality == "RGB" else 2) * self.new_length
        base_out = self.base_model(
            input.reshape((-1, channels) + input.shape[-2:])
        )  # (N*T, C, H, W)
        if self.new_fc is not None:
            base_out = self.new_fc(base_out)  # (N*T, K)
        if not self.before_softmax:
            base_out = base_out.softmax(dim=1)
        t = self.num_segments // 2 if (self.is_shift and self.temporal_pool) else self.num_segments
        base_out = base_out.view((-1, t) + base_out.shape[1:])  # (N, T, K)
        if self.consensus_type == "identity":
            return base_out
        return base_out.mean(dim=1)  # (N, K)


# Residual blocks the non-local blocks follow in NL I3D-ResNet50 (mmaction2's non_local
# ((0, 0, 0), (0, 1, 0, 1), (0, 1, 0, 1, 0, 1), (0, 0, 0)): res3 blocks 1, 3 and res4 blocks 1, 3,
# 5, counted from 0); ResNet-101 uses the same five.
I3D_NL_WHERE = ("layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5")
# Block settings that differ on I3D by default: mmaction2's non-local block has no bias in its
# output conv (a BN follows it).
I3D_BLOCK_DEFAULTS = {"nl": {"out_bias": False}}
I3D_SETTINGS = (
    "num_class", "num_segments", "modality", "dropout", "non_local", "nl_type", "nl_where",
    "nl_options", "input_size",
)  # fmt: skip
# TSN keywords an I3D takes only at the value that means "not used" (anything else is an error).
TSN_ONLY = {
    "is_shift": False, "temporal_pool": False, "consensus_type": "avg", "new_length": (None, 1),
    "before_softmax": True,
}  # fmt: skip
TSN_IGNORED = ("shift_div", "shift_place", "shift_recompute", "img_feature_dim", "crop_num")


class I3D(VideoModel):
    """Inflated 3-D ResNet (``archs/i3d.py``) on the project's clips: ``[N, T*3, H, W]`` frames in
    time order (normalised as for TSN) -> ``[N, num_class]`` logits. The clip becomes
    ``[N, 3, T, H, W]``; the backbone's res5 features are averaged over time and space, then
    dropout and ``new_fc`` (mmaction2's ``I3DHead``: weights normal std 0.01, bias 0).

    Non-local blocks come from the same registry as the TSM models (``ops/non_local.py``),
    placed by default after ``I3D_NL_WHERE`` (NL I3D-ResNet50's places); ``nl_type='nl'`` is
    mmaction2's embedded-Gaussian block (``--nl_options '{"mode": "dot_product"}'`` or
    ``"gaussian"`` for the others), ``'rnl'`` an RNL I3D. Partial BN and the optimizer groups
    follow the TSN rules; mmaction2 trains every BN (``partial_bn=False``, ``--npb``).

    Keywords are TSN's (``ops.models.build_model`` passes the same set to either model); those
    that mean nothing here are accepted only at their "off" value (``TSN_ONLY``) or ignored
    (``TSN_IGNORED``). ``num_segments`` is the clip length (at least 5 frames: res3 must see
    one).
    """

    train_crop = dict(scales=[1, 0.8], max_distort=0, more_fix_crop=False)  # mmaction2's

    def __init__(
        self,
        num_class: int,
        num_segments: int,
        modality: str = "RGB",
        base_model: str = "i3d_resnet50",
        dropout: float = 0.5,
        partial_bn: bool = True,
        print_spec: bool = True,
        pretrain: str = "imagenet",
        fc_lr5: bool = False,
        non_local: bool = False,
        nl_type: str = "rnl",
        nl_where: Sequence[str] | str | None = None,
        nl_options: dict | None = None,
        rnl_fused: bool = True,
        region_impl: str = "depthwise",
        recompute: bool = True,
        checkpoint_blocks: bool = False,
        input_size: int = 224,
        **tsn_keywords,
    ):
        super().__init__()
        for key, value in tsn_keywords.items():
            if key in TSN_IGNORED:
                continue
            if key not in TSN_ONLY:
                raise TypeError(f"I3D got an unexpected keyword argument {key!r}")
            allowed = TSN_ONLY[key] if isinstance(TSN_ONLY[key], tuple) else (TSN_ONLY[key],)
            if value not in allowed:
                raise ValueError(
                    f"{key}={value!r} does not apply to {base_model}: a 3-D network models time "
                    f"itself (use {allowed[0]!r})"
                )
        if base_model not in I3D_ARCHS:
            raise ValueError(f"unknown I3D model {base_model!r}: choose one of {list(I3D_ARCHS)}")
        if modality != "RGB":
            raise ValueError(f"{base_model} takes RGB clips, not {modality}")
        if num_segments < 5:
            raise ValueError(
                f"{base_model} needs clips of at least 5 frames (its stem and pool2 divide time "
                f"by 8), got {num_segments}"
            )
        if isinstance(nl_where, str):
            nl_where = [w for w in nl_where.split(",") if w]
        self.num_class, self.num_segments, self.modality = num_class, num_segments, modality
        self.base_model_name, self.dropout, self.pretrain = base_model, dropout, pretrain
        self.new_length, self.fc_lr5, self.input_size = 1, fc_lr5, input_size
        self.non_local, self.nl_type = non_local, nl_type
        self.nl_where = list(nl_where) if nl_where else None
        self.nl_options = {}
        if non_local:
            defaults = I3D_BLOCK_DEFAULTS.get(nl_type, {})
            resolved = {**defaults, **(nl_options or {})}
            self.nl_options = block_settings(nl_type, resolved)
            # recorded whatever their value: they are not the block's defaults on an I3D
            self.nl_options.update({key: resolved[key] for key in defaults})
        self.input_mean = [0.485, 0.456, 0.406]
        self.input_std = [0.229, 0.224, 0.225]
        self._channels_last = False

        weights = pretrain
        if pretrain not in ("imagenet", "scratch", ""):  # a file
            weights = read_backbone_weights(pretrain)
        self.base_model = build_backbone(base_model, weights, source=pretrain)
        self.base_model.last_layer_name = "fc"
        if non_local:
            make_non_local(
                self.base_model, None, nl_type=nl_type, where=self.nl_where or I3D_NL_WHERE,
                fused=rnl_fused, region_impl=region_impl, **self.nl_options,
            )  # fmt: skip
        if recompute or checkpoint_blocks:
            make_recompute(self.base_model, checkpoint_blocks=checkpoint_blocks)
        feature_dim = self.base_model.fc.in_features
        self.base_model.fc = nn.Dropout(p=dropout)
        self.new_fc = nn.Linear(feature_dim, num_class)
        nn.init.normal_(self.new_fc.weight, 0, 0.01)
        nn.init.zeros_(self.new_fc.bias)
        self.partialBN(partial_bn)
        if print_spec:
            logger.info(
                "I3D: %s, %d frames, dropout %s, non-local %s",
                base_model,
                num_segments,
                dropout,
                f"{nl_type} at {','.join(self.nl_where or I3D_NL_WHERE)}" if non_local else "off",
            )

    def model_config(self) -> dict:
        """The model settings (``build_model(**cfg)`` rebuilds this network); checkpoints store
        them. As for TSN, training-only switches and fast paths are not settings."""
        cfg = {key: copy.deepcopy(getattr(self, key)) for key in I3D_SETTINGS}
        cfg["base_model"] = self.base_model_name
        return cfg

    def to_channels_last(self) -> I3D:
        """Store the 3-D conv weights channels-last (``channels_last_3d``, ``--channels_last``);
        the clip is converted to match in ``forward``."""
        for p in self.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        self._channels_last = True
        return self

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        n = input.shape[0]
        x = input.reshape(n, -1, 3, *input.shape[-2:]).transpose(1, 2)  # (N, 3, T, H, W)
        x = x.contiguous(
            memory_format=torch.channels_last_3d if self._channels_last else torch.contiguous_format
        )
        x = self.base_model.features(x)  # (N, 2048, T/8, H/32, W/32)
        x = self.base_model.fc(torch.flatten(self.base_model.avgpool(x), 1))  # dropout
        return self.new_fc(x)  # (N, K)


def is_i3d(base_model: str) -> bool:
    """Whether ``base_model`` names a 3-D network (``I3D``) rather than a TSN backbone."""
    return base_model in I3D_ARCHS


def build_model(**kwargs) -> VideoModel:
    """The video model of TSN keywords (``TSN(**kwargs)``'s): an ``I3D`` when ``base_model``
    names an I3D network (``i3d_resnet50``, ``i3d_resnet101``), else a ``TSN``. Checkpoints,
    ``main.py`` and the tools build their models through it."""
    base_model = kwargs.get("base_model", "resnet101")  # TSN's default
    if is_i3d(base_model):
        return I3D(**kwargs)
    if base_model not in ARCHS:
        raise ValueError(
            f"unknown base model {base_model!r}: choose one of {', '.join(ARCHS + tuple(I3D_ARCHS))}"
        )
    return TSN(**kwargs)


mmaction_compat.register_model_builder(build_model)  # it reads mmaction2 files with it


# ---------------------------------------------------------------------------------------------
# the backbone's weights from a file (--pretrain PATH)
# ---------------------------------------------------------------------------------------------
def read_backbone_weights(path: str) -> dict[str, torch.Tensor]:
    """The backbone state_dict in the file ``path``: a state_dict, or a checkpoint holding one
    under ``state_dict`` / ``model``, without ``module.`` prefixes. Read with ``weights_only=True``
    (``read_torch_file``): a one-line ``CheckpointError`` naming ``--pretrain file`` for a folder,
    a missing, damaged or foreign file, or a pickle that would run code; ValueError for a file
    that holds no dict."""
    sd = read_torch_file(path, what="--pretrain file")
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(
            f"--pretrain {path} does not hold a state_dict: expected a dict of tensors"
        )
    return {k.removeprefix("module."): v for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------
# recompute: the walker that turns the model's residual blocks into recomputing ones
# ---------------------------------------------------------------------------------------------
def make_recompute(net: nn.Module, checkpoint_blocks: bool = False) -> None:
    """Recompute cheap activations in the stem and every residual block of the torchvision ResNet
    or I3D ResNet (``archs/i3d.py``) ``net`` (layer1..4) and in the modules attached after them (``NonLocalWrapper.recompute``);
    ``checkpoint_blocks`` recomputes the residual blocks entirely (see ``ops/recompute.py`` for
    the policies). Call after the temporal shift and the non-local blocks are in. Each block
    becomes the ``Recomputed`` subclass of its class (same parameters and buffers, so the
    state_dict is unchanged)."""
    if type(net) in RECOMPUTED_NETS:
        net.__class__ = RECOMPUTED_NETS[type(net)]
    for stage in range(1, 5):
        layer = getattr(net, f"layer{stage}")
        for unit in layer.net if isinstance(layer, TemporalPool) else layer:
            if isinstance(unit, NonLocalWrapper):
                unit.recompute = True
                unit = unit.block
            block = unit.net if isinstance(unit, TemporalShift) else unit  # place='block'
            if type(block) not in RECOMPUTED:
                raise ValueError(f"recompute: unexpected residual block {type(block).__name__}")
            block.__class__ = RECOMPUTED[type(block)]
            block.recompute_policy = keep_attention if checkpoint_blocks else keep_block_outputs
            for shift in block.modules():
                # the block's replay re-shifts already; the shift+conv that re-shifts in its own
                # backward would shift a third time (the shift's adjoint backward stays)
                if isinstance(shift, TemporalShift):
                    shift.fuse_conv = False
