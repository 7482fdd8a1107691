"""The model matrix (``make zoo``): every supported family through the whole pipeline, written to docs/models.md.

For each family: a one-epoch fine-tune at a small size on a small Fashion-MNIST folder (from the embedded
subset), ``export --int8 --target all``, ONNX Runtime fp32/int8 and OpenVINO int8 builds, and ``verify``.
Each step is the real command (its click options parsed by click, its config built by the command's
``config_from_params``, its stage function called in this process, so torch is imported once); a step that
fails is recorded with the exception's one line and the family goes on where it can (a failed export
still lets nothing else run; a failed build leaves the other builds). Nothing is skipped silently.

    python benchmarks/zoo.py                         # all families -> docs/models.md (+ .json)
    python benchmarks/zoo.py --families timm/repvgg_a0 resnet18 --out /tmp/zoo.md
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.zoo_report import write_report  # noqa: E402

TORCHVISION_FAMILIES = [
    "resnet18", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
    "regnet_y_400mf", "shufflenet_v2_x1_0", "convnext_tiny", "swin_t", "vit_b_16",
]
TIMM_FAMILIES = [
    "timm/mobilenetv4_conv_small", "timm/efficientnet_lite0", "timm/repvgg_a0", "timm/mobileone_s0",
    "timm/fastvit_t8",
]
FAMILIES = TIMM_FAMILIES + TORCHVISION_FAMILIES
# Fashion-MNIST classes that a one-epoch model separates well above chance (T-shirt, Trouser, Bag), so
# agreement is measured on a model that has learned something rather than on near-uniform logits.
DEFAULT_CLASSES = (0, 1, 8)
BUILDS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "int8"))


def one_line(exc: BaseException) -> str:
    """The exception's first line, as the CLI would print it."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:300]


def make_dataset(root: Path, classes: Sequence[int] = DEFAULT_CLASSES, train_per_class: int = 100,
                 val_per_class: int = 40) -> Path:
    """``root/train/<class>`` and ``root/val/<class>`` PNGs from the embedded Fashion-MNIST subset."""
    from PIL import Image

    data = np.load(ROOT / "edgexfer" / "assets" / "fashion_mnist_mini.npz")
    names = [str(n) for n in data["class_names"]]
    for split, images, labels, count in (("train", data["train_images"], data["train_labels"], train_per_class),
                                         ("val", data["test_images"], data["test_labels"], val_per_class)):
        for label in classes:
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(np.flatnonzero(labels == label)[:count]):
                Image.fromarray(images[index]).convert("RGB").save(folder / f"{i:04d}.png")
    return root


def run_command(name: str, args: Sequence[str]) -> Any:
    """Parse ``args`` with the command's click options and run its stage function in this process."""
    from edgexfer.cli import COMMANDS

    module = importlib.import_module(COMMANDS[name][0])
    command = getattr(module, COMMANDS[name][1])
    with command.make_context(name, [str(a) for a in args]) as ctx:
        config = module.config_from_params(ctx.params, False)
    if name == "finetune":
        from edgexfer.stages.finetune import run_finetune
        return run_finetune(config)
    if name == "export":
        from edgexfer.stages.export import run_export
        return run_export(config)
    if name == "build":
        from edgexfer.stages.build import run_build
        return run_build(config)
    if name == "verify":
        from edgexfer.stages.verify import verify_artifacts
        return verify_artifacts(config)
    raise ValueError(f"the zoo does not run '{name}'")


def _step(row: Dict[str, Any], key: str, name: str, args: Sequence[str]) -> Optional[Any]:
    begin = time.perf_counter()
    try:
        result = run_command(name, args)
    except Exception as exc:  # noqa: BLE001 - the matrix records every failure and goes on
        row["errors"][key] = one_line(exc)
        row["seconds"][key] = round(time.perf_counter() - begin, 1)
        if not hasattr(exc, "exit_code"):  # not an EdgexferError: keep the traceback for the JSON
            row["tracebacks"][key] = traceback.format_exc(limit=-3)
        return None
    row["seconds"][key] = round(time.perf_counter() - begin, 1)
    return result


def run_family(model: str, data: Path, work: Path, size: int = 32, epochs: int = 1,
               builds: Sequence[tuple] = BUILDS, verify_limit: int = 60) -> Dict[str, Any]:
    """One family through finetune -> export (float + INT8 for every target) -> builds -> verify."""
    from edgexfer.manifest import Manifest

    run_dir = work / model.replace("/", "_")
    shutil.rmtree(run_dir, ignore_errors=True)
    row: Dict[str, Any] = {"model": model, "errors": {}, "seconds": {}, "tracebacks": {}, "quantized": {},
                           "built": {}, "verify": {}}
    result = _step(row, "finetune", "finetune", [
        "--model", model, "--weights", "none", "--data", data, "--size", size, "--epochs", epochs,
        "--batch-size", 16, "--optimizer", "adamw", "--lr", 0.002, "--warmup-epochs", 0, "--precise-bn", 64,
        "--workers", 0, "--out", run_dir])
    if result is None:
        return row
    row["val_top1"] = round(100 * result.best_val_top1, 2)
    export_args = ["--int8", "--target", "all", "--calib-size", 64, "--calib-method", "minmax",
                   "--eval-size", verify_limit, run_dir]
    if _step(row, "export", "export", export_args) is None:
        # the float model may still have been written before an INT8 step failed
        if not Manifest.open(run_dir).has("onnx"):
            return row
    manifest = Manifest.open(run_dir)
    row["exported"] = manifest.has("onnx")
    onnx_metrics = manifest.get("onnx").metrics if row["exported"] else {}
    row["export_max_abs_diff"] = onnx_metrics.get("max_abs_diff")
    row["reparameterized"] = onnx_metrics.get("reparameterized", False)
    row["reparam_max_abs_diff"] = onnx_metrics.get("reparam_max_abs_diff")
    for name in manifest.artifacts:
        if name.startswith("onnx_int8_"):
            metrics = manifest.get(name).metrics
            row["quantized"][name[len("onnx_int8_"):]] = {"drop": metrics.get("drop"),
                                                         "agreement": metrics.get("agreement")}
    for backend, precision in builds:
        key = f"{backend}_{precision}"
        row["built"][key] = _step(row, f"build {key}", "build",
                                  ["--backend", backend, "--precision", precision, run_dir]) is not None
    verified = _step(row, "verify", "verify", ["--limit", verify_limit, "--no-plots", run_dir])
    if verified is not None:
        outcome = verified.outcome()
        verdict = verified.data.get("verdict") or {}
        row["verdict"] = verdict.get("status") if isinstance(verdict, dict) else verdict
        if outcome is not None:
            row["errors"]["verify"] = one_line(outcome)
        reference = verified.data.get("reference", {})
        row["reference_top1"] = reference.get("top1")
        row["torch_p50_ms"] = (reference.get("latency") or {}).get("p50_ms")
        for artifact in verified.data.get("artifacts", []):
            row["verify"][artifact["name"]] = {
                "status": artifact.get("status"), "error": artifact.get("error"),
                "agreement_pct": (artifact.get("agreement") or {}).get("agreement_pct"),
                "top1": (artifact.get("accuracy") or {}).get("top1"),
                "p50_ms": (artifact.get("latency") or {}).get("p50_ms")}
    return row


def run_zoo(families: Sequence[str], work: Path, size: int = 32, epochs: int = 1,
            train_per_class: int = 100, val_per_class: int = 40, log: Any = print,
            after_each: Any = None) -> List[Dict[str, Any]]:
    """Every family in turn; a family that fails at any step is recorded and the next one runs.
    ``after_each(rows)`` is called after every family (the command line rewrites its outputs then)."""
    data = make_dataset(work / "data", train_per_class=train_per_class, val_per_class=val_per_class)
    rows = []
    for model in families:
        begin = time.perf_counter()
        try:
            row = run_family(model, data, work, size=size, epochs=epochs)
        except Exception as exc:  # noqa: BLE001 - the zoo's own bookkeeping failed: record, go on
            row = {"model": model, "errors": {"zoo": one_line(exc)}, "seconds": {}, "quantized": {}, "built": {},
                   "verify": {}, "tracebacks": {"zoo": traceback.format_exc()}}
        row["total_seconds"] = round(time.perf_counter() - begin, 1)
        log(f"{model}: {row['total_seconds']} s, errors: {row['errors'] or 'none'}")
        rows.append(row)
        if after_each is not None:
            after_each(rows)
    return rows


def merge(sources: Sequence[Path], out: Path) -> int:
    """One report from several zoo runs (e.g. two halves run side by side): rows in order, wall times summed."""
    loaded = [json.loads(Path(source).read_text()) for source in sources]
    rows: List[Dict[str, Any]] = []
    for row in (row for data in loaded for row in data["rows"]):  # a family run twice: the first run counts
        if row["model"] not in {seen["model"] for seen in rows}:
            rows.append(row)
    settings = dict(loaded[0]["settings"])
    settings["wall_seconds"] = sum(data["settings"]["wall_seconds"] for data in loaded)
    settings["families_done"] = f"{len(rows)} (from {len(loaded)} runs)"
    done = {row["model"] for row in rows}
    settings["not_run"] = [family for family in FAMILIES if family not in done]
    out.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    write_report(rows, settings, out)
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: families, sizes, where to write the Markdown (and JSON next to it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=FAMILIES)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-per-class", type=int, default=50)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgexfer-zoo"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "models.md")
    parser.add_argument("--cpu-note", default="")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="Only write --out from these earlier runs' JSON files (rows in the order given).")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    import logging

    logging.basicConfig(level=logging.WARNING)
    begin = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(rows: List[Dict[str, Any]]) -> None:  # after every family, so a long run's progress is readable
        settings = {"size": args.size, "epochs": args.epochs, "train_per_class": args.train_per_class,
                    "val_per_class": args.val_per_class, "classes": len(DEFAULT_CLASSES),
                    "wall_seconds": round(time.perf_counter() - begin), "cpu_note": args.cpu_note,
                    "families_done": f"{len(rows)} of {len(args.families)}"}
        args.out.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
        write_report(rows, settings, args.out)

    run_zoo(args.families, args.work, args.size, args.epochs, args.train_per_class, args.val_per_class,
            after_each=write)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
