"""``edgexfer finetune``: parse options, build a FinetuneConfig, call run_finetune, say what is next."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict

import click

from edgexfer.console import shell_arg

from edgexfer.errors import ConfigError
from edgexfer.training.precise_bn import DEFAULT_IMAGES as PRECISE_BN_IMAGES

if TYPE_CHECKING:
    from edgexfer.stages.finetune import FinetuneConfig

_EPILOG = """\b
Examples:
  # the classic recipe: ImageNet ResNet-18, new head, SGD, all layers (needs the weights once)
  edgexfer finetune --model resnet18 --weights imagenet --data cifar10 --strategy full
  # offline, on the embedded Fashion-MNIST subset
  edgexfer finetune --data embedded --weights none --out runs/fmnist
  # transfer from your own run: pretrain on classes 0-4, fine-tune on 5-9
  edgexfer finetune --data embedded --classes 0-4 --weights none --out runs/src
  edgexfer finetune --data embedded --classes 5-9 --weights runs/src/finetune/best.pt --out runs/dst
  # several processes (DDP; gloo on CPU, nccl on CUDA)
  torchrun --nproc_per_node=2 -m edgexfer finetune --data DIR --out runs/ddp
"""


def default_out(model: str) -> Path:
    """``runs/<model>-<UTC timestamp>``: a new folder per run, sortable by time."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{model}-{stamp}"


@click.command("finetune", epilog=_EPILOG)
@click.option(
    "--model",
    default="resnet18",
    show_default=True,
    help="torchvision classification model (resnet18, mobilenet_v3_small, efficientnet_b0, ...).",
)
@click.option(
    "--weights",
    default="imagenet",
    show_default=True,
    help="imagenet (torchvision weights API), none (random init), or a path to a state_dict, "
    "torchvision .pth or edgexfer checkpoint.",
)
@click.option(
    "--data",
    default="embedded",
    show_default=True,
    help="Folder <dir>/<class>/<img> (or <dir>/train + <dir>/val), embedded (offline Fashion-MNIST "
    "subset), cifar10 or fashion-mnist.",
)
@click.option(
    "--classes", default=None, help="Class subset by index ranges or names, e.g. 0-4 or Sandal,Bag."
)
@click.option(
    "--val-fraction",
    default=0.2,
    show_default=True,
    type=float,
    help="Validation share when one folder is split (stratified, seeded).",
)
@click.option("--max-per-class", default=None, type=int, help="Cap training images per class (quick runs).")
@click.option("--strict", is_flag=True, help="Fail on corrupt / non-image files instead of skipping them.")
@click.option(
    "--strategy",
    type=click.Choice(["linear", "partial", "full"]),
    default="full",
    show_default=True,
    help="linear: frozen backbone, cached features; partial: last N blocks; full: all layers.",
)
@click.option(
    "--unfreeze-blocks", default=1, show_default=True, type=int, help="Blocks trained by 'partial'."
)
@click.option("--epochs", default=None, type=int, help="Epochs [linear 15, partial/full 10].")
@click.option(
    "--batch-size", default=64, show_default=True, type=int, help="Global batch (split over DDP ranks)."
)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True)
@click.option(
    "--lr", default=None, type=float, help="Head learning rate [sgd: linear 0.1, else 0.01; adamw 1e-3/5e-4]."
)
@click.option(
    "--backbone-lr-mult",
    default=None,
    type=float,
    help="Backbone lr = lr x this [0.1 with pretrained weights, 1.0 with --weights none].",
)
@click.option("--momentum", default=0.9, show_default=True, type=float)
@click.option("--weight-decay", default=None, type=float, help="[sgd 1e-4, adamw 0.05]")
@click.option(
    "--warmup-epochs", default=None, type=float, help="Linear warmup before cosine decay [1; linear 0]."
)
@click.option("--label-smoothing", default=0.1, show_default=True, type=float)
@click.option(
    "--size",
    default=None,
    type=int,
    help="Input size [64 for embedded/cifar10/fashion-mnist, else the weights' own, 224].",
)
@click.option(
    "--augment",
    type=click.Choice(["none", "light", "standard"]),
    default=None,
    help="Augmentation preset [light for small images, standard for folders].",
)
@click.option(
    "--precise-bn",
    "precise_bn",
    default=PRECISE_BN_IMAGES,
    show_default=True,
    type=int,
    help="Recompute BatchNorm running statistics on this many training images before each validation "
    "(0: off). Low-momentum families (MobileNetV3, EfficientNet, RegNet) validate at chance without it.",
)
@click.option(
    "--amp",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Mixed precision: CUDA fp16/bf16; bf16 on CPUs with native bf16 (auto).",
)
@click.option(
    "--channels-last",
    "channels_last",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--patience",
    default=5,
    show_default=True,
    type=int,
    help="Early stopping: epochs without val top-1 gain (0 disables).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch.")
@click.option(
    "--workers", "num_workers", default=None, type=int, help="DataLoader workers [0 on <= 2 cores]."
)
@click.option(
    "--out", default=None, type=click.Path(path_type=Path), help="Run directory [runs/<model>-<timestamp>]."
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def finetune(**params: Any) -> None:
    """Fine-tune a torchvision classifier on your images (writes <out>/finetune/best.pt)."""
    from edgexfer.console import progress_enabled
    from edgexfer.stages.finetune import run_finetune
    from edgexfer.training.runtime import Runtime

    result = run_finetune(config_from_params(click.get_current_context().params, progress_enabled()))
    if not Runtime.is_main_process():
        return
    click.echo(
        f"best val top-1 {100 * result.best_val_top1:.2f}% at epoch {result.best_epoch} "
        f"({result.epochs_run} epochs run{', stopped early' if result.stopped_early else ''})"
    )
    if result.collapse:
        click.echo(result.collapse)
    click.echo(f"checkpoint: {result.checkpoint}")
    click.echo(f"metrics:    {result.metrics_path}")
    click.echo(f"curves:     {result.plot_path}")
    click.echo(f"next: edgexfer export {shell_arg(result.run_dir)} --int8 --target all")


def config_from_params(params: Dict[str, Any], progress: bool) -> "FinetuneConfig":
    """The validated :class:`FinetuneConfig` for the click parameters of ``edgexfer finetune``.

    ``params`` maps click's parameter names (``num_workers`` for ``--workers``) to values, click's
    defaults applied. ``progress``: whether bars may be drawn at all (``--no-progress`` turns them off).
    ``--out`` defaults to a new ``runs/<model>-<timestamp>`` folder, which ``--resume`` cannot continue.
    """
    from edgexfer.stages.finetune import FinetuneConfig

    options = dict(params)
    out, no_progress = options.pop("out"), options.pop("no_progress")
    if options["resume"] and out is None:
        raise ConfigError("--resume needs --out DIR: the run directory to continue")
    if out is None:
        out = default_out(options["model"])
    return FinetuneConfig(out=out, progress=progress and not no_progress, **options)
