"""``edgexfer run pipeline.yaml`` and ``edgexfer demo``: the whole pipeline from one config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Tuple

import click


def _step_printer(dry_run: bool) -> Any:
    def show(step: Any) -> None:
        if dry_run:
            verb = "would run" if step.action == "run" else "would skip"
        else:
            verb = "running" if step.action == "run" else "skipping"
        click.echo(f"[{step.run}] {verb} {step.key} ({step.reason})", err=True)

    return show


def _finish(result: Any, started: float, transfer: Optional[str] = None, baseline: Optional[str] = None,
            dry_run: bool = False) -> None:
    from edgexfer.fsutil import atomic_write_text
    from edgexfer.summary import summary_markdown

    if dry_run:
        click.echo(f"dry run: {sum(s.action == 'run' for s in result.steps)} of {len(result.steps)} steps "
                   "would run")
        return
    text = summary_markdown(result.runs, transfer=transfer, baseline=baseline)
    summary_path = result.out / "summary.md"
    atomic_write_text(summary_path, text)
    ran = sum(s.action == "run" for s in result.steps)
    unchanged = sum(s.action == "skip" and s.reason == "inputs unchanged" for s in result.steps)
    unavailable = len(result.steps) - ran - unchanged
    click.echo("")
    click.echo(text)
    click.echo(f"pipeline done in {time.perf_counter() - started:.0f} s: {ran} steps ran, {unchanged} skipped "
               f"(inputs unchanged), {unavailable} skipped (backend not available here)")
    click.echo(f"outputs: {result.out} (summary: {summary_path}; per run: manifest.json, verify/report.md)")


@click.command("run")
@click.argument("pipeline_file", type=click.Path(path_type=Path))
@click.option("--force", "force", multiple=True, metavar="STAGE",
              help="Re-run this stage (finetune, export, build, verify, bench, or all) even if unchanged.")
@click.option("--dry-run", is_flag=True, help="Only say which stages would run and why.")
@click.pass_context
def run(ctx: click.Context, pipeline_file: Path, force: Tuple[str, ...], dry_run: bool) -> None:
    """Run the pipeline in PIPELINE_FILE (YAML), skipping stages whose inputs did not change.

    See examples/pipeline.yaml for every stage's options.
    """
    from edgexfer.pipeline import run_pipeline_file

    started = time.perf_counter()
    quiet = bool(ctx.find_root().obj.get("quiet"))
    result = run_pipeline_file(pipeline_file, force=force, dry_run=dry_run, progress=not quiet,
                               on_step=_step_printer(dry_run))
    _finish(result, started, dry_run=dry_run)


def demo_pipeline(out: Path, quick: bool = False) -> dict:
    """The built-in demo config (edgexfer/assets/demo.yaml) with ``out`` and calibration resolved."""
    import edgexfer
    from edgexfer.config import load_yaml

    data = load_yaml(Path(edgexfer.__file__).parent / "assets" / "demo.yaml")
    data["out"] = str(out)
    calib = Path(edgexfer.__file__).resolve().parent.parent / "calibration" / "fashion-mnist"
    target = data["runs"]["target"]
    if calib.is_dir():
        target["export"]["calib"] = str(calib)
    else:  # an installed (non-checkout) edgexfer: calibrate on the run's own training split
        target["export"].pop("calib", None)
    if quick:
        for run_cfg in data["runs"].values():
            run_cfg["finetune"].update(epochs=1, max_per_class=60)
        target["export"]["calib_size"] = 64
        target["export"]["eval_size"] = 100
    return data


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Folder for the demo's run directories.")
@click.option("--quick", is_flag=True, help="A one-epoch, few-image version (a smoke test, not the story).")
@click.option("--force", "force", multiple=True, metavar="STAGE", help="Re-run this stage even if unchanged.")
@click.pass_context
def demo(ctx: click.Context, out: Path, quick: bool, force: Tuple[str, ...]) -> None:
    """The offline demo: pretrain a source model on Fashion-MNIST classes 0-4 (standing in for ImageNet),
    transfer it to classes 5-9, export, quantize for CPU and TensorRT, build, then verify accuracy and latency.
    """
    from edgexfer.pipeline import run_pipeline

    started = time.perf_counter()
    quiet = bool(ctx.find_root().obj.get("quiet"))
    result = run_pipeline(demo_pipeline(out, quick), base_dir=Path("."), force=force, progress=not quiet,
                          on_step=_step_printer(False))
    _finish(result, started, transfer="target", baseline="scratch")
