"""Classification models by name, with the head replaced correctly for every family: the model registry.

Two sources: torchvision (``resnet18``) and timm (``timm/repvgg_a0``, :mod:`edgexfer.timm_models`, the
``timm`` extra). Every function here dispatches on the name or the model, so the stages never ask which
source a model came from: building, head replacement, ImageNet weights, the preprocessing the weights
expect and the deploy-time form (timm's reparameterization) all go through this module.

Head replacement reads the input width from the model itself (ResNet-18's ``fc`` takes 512 features,
not the 500 some tutorials write), so it works for every family: ``fc`` (ResNet, ResNeXt, RegNet,
ShuffleNet, GoogLeNet, Inception), ``classifier[-1]`` (MobileNet, EfficientNet, ConvNeXt, VGG,
MNASNet, MaxViT), ``classifier`` (DenseNet), ``heads.head`` (ViT), ``head`` (Swin) and SqueezeNet's
1x1 convolution.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

from edgexfer.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

# Names that need extra care or are not image classifiers over 3xHxW inputs.
_EXCLUDED = {"inception_v3", "googlenet"}  # aux-logit heads; exportable, but need aux_logits=False tricks


def list_models() -> List[str]:
    """The torchvision classification models edgexfer can fine-tune, sorted."""
    from edgexfer.torchdeps import require_torch

    require_torch("the torchvision model zoo (finetune, export, bench --model)")
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return sorted(n for n in names if n not in _EXCLUDED and not n.startswith("quantized"))


def check_model_name(name: str) -> str:
    """Return ``name`` if known, else raise a ConfigError (ModelError for ``timm/``) naming close ones."""
    from edgexfer.timm_models import check_timm_name, is_timm_name

    if is_timm_name(name):
        return check_timm_name(name)
    names = list_models()
    if name in names:
        return name
    close = difflib.get_close_matches(name.lower(), names, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known models include {', '.join(names[:12])}, ..."
    raise ConfigError(f"unknown model '{name}'; {hint} (all: python -c 'import edgexfer.models as m; "
                      "print(m.list_models())')")


def find_head(model: Any) -> Tuple[str, Any]:
    """Return (dotted attribute path, module) of the final classification layer."""
    import torch.nn as nn

    if _is_timm_model(model):
        from edgexfer.timm_models import head_path

        path = head_path(model)
        return path, model.get_submodule(path)
    candidates = []
    for attr in ("fc", "classifier", "head", "heads"):
        module = getattr(model, attr, None)
        if module is None:
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            candidates.append((attr, module))
            break
        last = None
        for sub_name, sub in module.named_modules():
            if isinstance(sub, (nn.Linear, nn.Conv2d)):
                last = (f"{attr}.{sub_name}", sub)
        if last is not None:
            candidates.append(last)
            break
    if not candidates:
        raise ModelError(f"cannot find the classification head of {type(model).__name__} "
                         "(looked for fc, classifier, head, heads)")
    return candidates[0]


def _set_submodule(model: Any, dotted: str, new: Any) -> None:
    parent = model
    parts = dotted.split(".")
    for part in parts[:-1]:
        parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
    last = parts[-1]
    if last.isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)


def replace_head(model: Any, num_classes: int) -> str:
    """Replace the final layer with a new one of ``num_classes`` outputs; return its dotted path.

    The new layer's input width is read from the old one (``in_features`` / ``in_channels``).
    """
    import torch.nn as nn

    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    if _is_timm_model(model):
        from edgexfer.timm_models import replace_head as timm_replace_head

        return timm_replace_head(model, num_classes)
    path, old = find_head(model)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:  # SqueezeNet's final 1x1 conv
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size, stride=old.stride)
    _set_submodule(model, path, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return path


def imagenet_weights(arch: str) -> Any:
    """torchvision's default ImageNet weights enum member for ``arch``."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError) as exc:
        raise ModelError(f"torchvision has no pretrained ImageNet weights for '{arch}'") from exc


def weights_cache_path(weights: Any) -> Path:
    """Where torch.hub keeps (or would keep) a torchvision weights file."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_imagenet_state_dict(arch: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Download (or read from the torch cache) the ImageNet state_dict; return it and the weights' meta.

    Offline, this fails with a line that says which file to fetch and where to put it.
    """
    from edgexfer.timm_models import is_timm_name, pretrained_state_dict

    if is_timm_name(arch):
        return pretrained_state_dict(arch)
    import torch.hub

    weights = imagenet_weights(arch)
    cached = weights_cache_path(weights)
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - urllib raises many types; all mean "could not get it"
        raise ModelError(f"cannot download ImageNet weights for {arch} ({type(exc).__name__}: {exc}); "
                         f"on a machine with network fetch {weights.url} and copy it to {cached}, "
                         f"or pass --weights PATH to the file, or --weights none") from exc
    transforms = weights.transforms()
    meta = {"source": f"torchvision:{weights}", "url": weights.url,
            "preprocess": {"size": int(transforms.crop_size[0]), "resize_size": int(transforms.resize_size[0]),
                           "mean": list(transforms.mean), "std": list(transforms.std)}}
    return state, meta


def _is_timm_model(model: Any) -> bool:
    """A model built by timm (it has timm's head API and timm's pretrained_cfg)."""
    return hasattr(model, "pretrained_cfg") and hasattr(model, "reset_classifier") and hasattr(
        model, "get_classifier")


def model_preprocess(arch: str) -> Dict[str, Any]:
    """The preprocessing the architecture itself declares (timm's data config), or {} (torchvision's
    come with its weights, see :func:`load_imagenet_state_dict`)."""
    from edgexfer.timm_models import is_timm_name, preprocess_meta

    return preprocess_meta(arch) if is_timm_name(arch) else {}


def deploy_form(model: Any) -> Tuple[Any, bool]:
    """(the model to export, whether it was reparameterized): timm families with a deploy-time form
    (RepVGG, MobileOne, FastViT) get a reparameterized copy; every other model is returned as is."""
    if _is_timm_model(model):
        from edgexfer.timm_models import deploy_form as timm_deploy_form, has_deploy_form

        if has_deploy_form(model):
            return timm_deploy_form(model), True
    return model, False


def build_model(arch: str, num_classes: int) -> Any:
    """A freshly initialised ``arch`` (torchvision, or ``timm/<name>``) with a ``num_classes`` head."""
    from edgexfer.timm_models import create, is_timm_name

    if is_timm_name(arch):
        return create(arch, num_classes)
    import torchvision

    check_model_name(arch)
    model = torchvision.models.get_model(arch, weights=None)
    replace_head(model, num_classes)
    return model


def load_backbone_weights(model: Any, state_dict: Dict[str, Any], source: str,
                          include_head: bool = False) -> Dict[str, List[str]]:
    """Load ``state_dict`` into ``model``; the head is skipped unless ``include_head`` (and shapes fit).

    Raises ModelError when the weights do not fit the model (missing/unexpected keys or shape
    mismatches in the backbone), naming a few of the offending keys.
    """
    head_path, _ = find_head(model)
    own = model.state_dict()
    head_keys = {k for k in own if k.startswith(head_path + ".")}
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    usable = {}
    mismatched = []
    for key, value in state_dict.items():
        if key in head_keys and not include_head:
            continue
        if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape):
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
            continue
        usable[key] = value
    missing = sorted(k for k in own if k not in usable and k not in head_keys
                     and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state_dict if k not in own and k.replace(head_path, "", 1) == k)
    if mismatched or missing or unexpected:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise ModelError(f"weights from {source} do not fit {type(model).__name__}: {'; '.join(parts)}; "
                         "pass the --model they were trained with")
    model.load_state_dict(usable, strict=False)
    return {"loaded": sorted(usable), "skipped_head": sorted(head_keys)}


# ---- freezing strategies and block grouping ------------------------------------------------------
STRATEGIES = ("linear", "partial", "full")

# Where each family keeps its sequence of feature blocks, input to output. The first match wins;
# a model matching none falls back to its top-level children (minus the head).
_BLOCK_CONTAINERS = (
    ("layer1", "layer2", "layer3", "layer4"),        # ResNet, ResNeXt, Wide ResNet (stem handled below)
    ("trunk_output",),                                # RegNet (stem handled below)
    ("conv1", "stage2", "stage3", "stage4", "conv5"),  # ShuffleNet V2
    ("features",),                                    # MobileNet, EfficientNet, ConvNeXt, VGG, DenseNet, ...
    ("layers",),                                      # MNASNet
    ("encoder",),                                     # ViT
    ("stages",),                                      # timm: RepVGG, MobileOne, FastViT, ConvNeXt, ...
    ("blocks",),                                      # timm: EfficientNet, MobileNetV3/V4
)


def backbone_blocks(model: Any) -> List[Tuple[str, Any]]:
    """The model's feature blocks as ``(dotted name, module)``, from input to output, head excluded.

    Granularity is the family's natural stage: ResNet ``layer1..layer4`` (after a ``stem``),
    RegNet's trunk stages, the children of ``features`` (MobileNet, EfficientNet, ConvNeXt, ...),
    ViT's encoder layers. ``partial`` fine-tuning unfreezes the last N of these.
    """
    import torch.nn as nn

    head_path, _ = find_head(model)
    top = head_path.split(".")[0]
    children = dict(model.named_children())
    for names in _BLOCK_CONTAINERS:
        if not all(n in children for n in names):
            continue
        if len(names) > 1:
            blocks = [(n, children[n]) for n in names]
        else:
            container = children[names[0]]
            if names[0] == "encoder" and hasattr(container, "layers"):
                blocks = [(f"encoder.layers.{n}", m) for n, m in container.layers.named_children()]
            else:
                blocks = [(f"{names[0]}.{n}", m) for n, m in container.named_children()]
        stem = [(n, m) for n, m in children.items()
                if n not in {b[0].split(".")[0] for b in blocks} and n != top
                and any(True for _ in m.parameters()) and list(children).index(n) < list(children).index(
                    blocks[0][0].split(".")[0])]
        if stem:
            blocks = [("stem", nn.ModuleList([m for _, m in stem]))] + blocks
        return [(n, m) for n, m in blocks if any(True for _ in m.parameters())]
    return [(n, m) for n, m in children.items() if n != top and any(True for _ in m.parameters())]


def head_parameter_names(model: Any) -> List[str]:
    """Names of the parameters of the classification head (what ``linear`` trains)."""
    head_path, _ = find_head(model)
    return [n for n, _ in model.named_parameters() if n.startswith(head_path + ".")]


def apply_strategy(model: Any, strategy: str, unfreeze_blocks: int = 1) -> Dict[str, List[str]]:
    """Set ``requires_grad`` per strategy; return ``{"trainable": [...], "frozen": [...]}`` names.

    ``linear``: only the head trains. ``partial``: the head, the last ``unfreeze_blocks`` blocks of
    :func:`backbone_blocks` and any parameters between them and the head (e.g. a final norm or a
    hidden classifier layer). ``full``: everything trains.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    names = [n for n, _ in model.named_parameters()]
    if strategy == "full":
        trainable = set(names)
    else:
        trainable = set(head_parameter_names(model))
        if strategy == "partial":
            blocks = backbone_blocks(model)
            if not 1 <= unfreeze_blocks <= len(blocks):
                raise ConfigError(f"--unfreeze-blocks must be between 1 and {len(blocks)} for "
                                  f"{type(model).__name__} (its blocks: {', '.join(n for n, _ in blocks)})")
            unfrozen = {id(p) for _, m in blocks[-unfreeze_blocks:] for p in m.parameters()}
            block_params = {id(p) for _, m in blocks for p in m.parameters()}
            params = list(model.named_parameters())
            last_block = max(i for i, (_, p) in enumerate(params) if id(p) in block_params)
            for index, (name, param) in enumerate(params):
                # blocks to unfreeze, plus loose parameters after the last block (a final norm, a hidden
                # classifier layer); loose ones before it (ViT's class token, positions) stay frozen
                if id(param) in unfrozen or (id(param) not in block_params and index > last_block):
                    trainable.add(name)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return {"trainable": [n for n in names if n in trainable],
            "frozen": [n for n in names if n not in trainable]}
