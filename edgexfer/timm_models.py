"""timm models as a second model source: ``--model timm/<name>`` (the ``timm`` extra).

Everything goes through timm's own API, so a model behaves as timm's documentation says:
``timm.create_model`` builds it, ``reset_classifier`` / ``get_classifier`` replace and find its head,
timm's pretrained loading (Hugging Face hub, or a local file through ``pretrained_cfg_overlay``) loads its
ImageNet weights, ``timm.data.resolve_data_config`` gives its preprocessing (mean/std, interpolation,
crop_pct), and ``timm.utils.reparameterize_model`` turns RepVGG / MobileOne / FastViT into their
deploy-time form before export. timm is imported only here, and only when a ``timm/`` name is used.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgexfer.errors import BackendUnavailableError, ModelError

PREFIX = "timm/"
TIMM_EXTRA = "pip install 'edgexfer[timm]'"
# Methods timm's reparameterize_model calls on a sub-module (timm/models/_manipulate.py)
DEPLOY_METHODS = ("fuse", "reparameterize", "switch_to_deploy")


def is_timm_name(name: str) -> bool:
    """Whether ``name`` is a timm model name (``timm/<name>``)."""
    return name.startswith(PREFIX)


def timm_name(name: str) -> str:
    """``timm/repvgg_a0`` -> ``repvgg_a0`` (timm's own name, optionally with a ``.tag``)."""
    return name[len(PREFIX):]


def _timm() -> Any:
    try:
        import timm
    except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BackendUnavailableError(
            f"timm models need the timm package, but it does not import ({reason}); install it with {TIMM_EXTRA}"
        ) from exc
    return timm


def check_timm_name(name: str) -> str:
    """Return ``name`` if timm knows the architecture, else a ModelError naming close ones and how to list."""
    timm = _timm()
    base, _, tag = timm_name(name).partition(".")
    if base and timm.is_model(base):
        tags = timm.list_pretrained(f"{base}.*")
        if tag and f"{base}.{tag}" not in tags:
            raise ModelError(f"timm model {base} has no weights tag '{tag}'; its tags: "
                             f"{', '.join(PREFIX + t for t in tags) or 'none'}")
        return name
    known = timm.list_models()
    close = difflib.get_close_matches(base.lower(), known, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(PREFIX + c for c in close)}? " if close else ""
    raise ModelError(
        f"unknown timm model '{name}'; {hint}list timm's names with "
        "python -c \"import timm; print(timm.list_models('*mobilenet*'))\" and pass --model timm/<name>"
    )


def create(name: str, num_classes: int, **kwargs: Any) -> Any:
    """``timm.create_model`` of a ``timm/`` name with a ``num_classes`` head and random weights."""
    timm = _timm()
    check_timm_name(name)
    return timm.create_model(timm_name(name), pretrained=False, num_classes=num_classes, **kwargs)


def head_path(model: Any) -> str:
    """The dotted path of ``model.get_classifier()`` (timm's own head accessor)."""
    head = model.get_classifier()
    for path, module in model.named_modules():
        if module is head and path:
            return path
    raise ModelError(f"timm's get_classifier() of {type(model).__name__} is not a sub-module of the model")


def replace_head(model: Any, num_classes: int) -> str:
    """timm's ``reset_classifier``; return the head's dotted path."""
    model.reset_classifier(num_classes)
    return head_path(model)


def data_config(name: str) -> Dict[str, Any]:
    """timm's ``resolve_data_config`` of the model (its pretrained_cfg): input size, interpolation, mean,
    std, crop_pct."""
    timm = _timm()
    from timm.data import resolve_data_config

    model = timm.create_model(timm_name(name), pretrained=False, num_classes=2)
    return dict(resolve_data_config({}, model=model))


def preprocess_meta(name: str) -> Dict[str, Any]:
    """The model's own preprocessing in edgexfer's terms (the ``preprocess`` dict of weights meta).

    ``resize_size = floor(size / crop_pct)``: timm's eval transform (transforms_factory, crop_mode
    ``center``) resizes the shorter side to that and centre-crops ``size``.
    """
    config = data_config(name)
    size = int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 0.875)
    interpolation = config.get("interpolation", "bilinear")
    return {
        "size": size,
        "resize_size": int(math.floor(size / crop_pct)),
        "crop_pct": crop_pct,
        "mean": [float(v) for v in config["mean"]],
        "std": [float(v) for v in config["std"]],
        "interpolation": interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear",
        "source": "timm.data.resolve_data_config",
    }


def _hub_id(name: str) -> Tuple[Optional[str], Optional[str]]:
    """(Hugging Face repo id, file name) of the model's default pretrained weights, where timm has them."""
    timm = _timm()
    model = timm.create_model(timm_name(name), pretrained=False, num_classes=2)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    return cfg.get("hf_hub_id"), cfg.get("hf_hub_filename") or "model.safetensors"


def offline_hint(name: str) -> str:
    """Which file to put where so that timm's loading finds the weights without network."""
    hub_id, filename = _hub_id(name)
    if not hub_id:
        return (f"timm has no hub weights for {timm_name(name)}; pass --weights PATH to a weights file, "
                "or --weights none")
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except Exception:  # noqa: BLE001 - an old huggingface_hub; the default cache is the same
        HF_HUB_CACHE = str(Path.home() / ".cache" / "huggingface" / "hub")
    return (
        f"on a machine with network run 'huggingface-cli download {hub_id} {filename}' and copy "
        f"{Path(HF_HUB_CACHE) / ('models--' + hub_id.replace('/', '--'))} here (same path), or fetch "
        f"https://huggingface.co/{hub_id}/resolve/main/{filename} and pass --weights PATH/{filename}, "
        "or --weights none"
    )


def pretrained_state_dict(name: str, file: Optional[Path] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """ImageNet weights through timm's loading code (the hub cache, or ``file`` through timm's
    ``pretrained_cfg_overlay=dict(file=...)``); return (state_dict of the 1000-class model, weights meta).

    The head is loaded too (timm's checkpoint filter adapts old layouts); the caller skips it.
    Offline without the file in the cache: a ModelError saying which file to put where.
    """
    timm = _timm()
    check_timm_name(name)
    kwargs: Dict[str, Any] = {}
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(file)}
    try:
        model = timm.create_model(timm_name(name), pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub, network and file errors come in many types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        where = f"the weights file '{file}'" if file is not None else "ImageNet weights"
        raise ModelError(
            f"cannot load {where} for {name} through timm ({type(exc).__name__}: {reason}); "
            + (offline_hint(name) if file is None else "pass a timm checkpoint of this model (.safetensors or .pth)")
        ) from exc
    source = f"timm:{timm_name(name)}" + (f"#file={file}" if file is not None else "")
    return model.state_dict(), {"source": source, "preprocess": preprocess_meta(name)}


# ---- the deploy-time form -------------------------------------------------------------------------
def has_deploy_form(model: Any) -> bool:
    """Whether any sub-module has a deploy-time form timm's ``reparameterize_model`` would switch to."""
    return any(hasattr(module, m) for module in model.modules() if module is not model for m in DEPLOY_METHODS)


def deploy_form(model: Any) -> Any:
    """A reparameterized copy (``timm.utils.reparameterize_model``; the input model is left as it is)."""
    _timm()
    from timm.utils import reparameterize_model

    return reparameterize_model(model, inplace=False).eval()


def block_containers() -> List[Tuple[str, ...]]:
    """Where timm families keep their feature blocks: ``stages`` (RepVGG, MobileOne, FastViT, ConvNeXt, ...)
    and ``blocks`` (EfficientNet, MobileNetV3/V4)."""
    return [("stages",), ("blocks",)]
