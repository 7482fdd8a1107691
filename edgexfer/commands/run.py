"""``edgexfer run pipeline.yaml`` and ``edgexfer demo``: the whole pipeline from one config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Tuple

import click

if TYPE_CHECKING:
    from edgexfer.pipeline import StageSpec


def pipeline_stages() -> Dict[str, "StageSpec"]:
    """The stages a pipeline runs, in order, each with the command whose options are its step's keys
    (the pipeline itself imports no command: commands -> pipeline -> stages)."""
    from edgexfer.commands import bench, build, deploy, export, finetune, verify
    from edgexfer.pipeline import StageSpec
    from edgexfer.bench_pipeline import run_bench
    from edgexfer.deploy.run import run_deploy_checked
    from edgexfer.stages.build import run_build
    from edgexfer.stages.export import run_export
    from edgexfer.stages.finetune import run_finetune
    from edgexfer.stages.verify import run_verify

    return {
        "finetune": StageSpec(finetune.finetune, finetune.config_from_params, run_finetune, "out"),
        "export": StageSpec(export.export, export.config_from_params, run_export, "run_dir"),
        "build": StageSpec(build.build, build.config_from_params, run_build, "run_dir"),
        "verify": StageSpec(verify.verify, verify.config_from_params, run_verify, "run_dir"),
        "bench": StageSpec(bench.bench, bench.config_from_params, run_bench, "run"),
        "deploy": StageSpec(deploy.deploy, deploy.config_from_params, run_deploy_checked, "run_dir"),
    }


def _step_printer(dry_run: bool) -> Any:
    def show(step: Any) -> None:
        if dry_run:
            verb = "would run" if step.action == "run" else "would skip"
        else:
            verb = "running" if step.action == "run" else "skipping"
        click.echo(f"[{step.run}] {verb} {step.key} ({step.why})", err=True)

    return show


def _finish(result: Any, text: str, started: float) -> None:
    """The summary, then one line counting the steps that ran and the skipped ones per reason."""
    ran = sum(s.action == "run" for s in result.steps)
    skipped = ", ".join(f"{n} skipped ({reason})" for reason, n in result.skip_counts().items())
    click.echo("")
    click.echo(text)
    click.echo(f"pipeline done in {time.perf_counter() - started:.0f} s: {ran} steps ran, {skipped}")
    click.echo(f"outputs: {result.out} (summary: {result.summary_path}; per run: manifest.json, verify/report.md)")


@click.command("run")
@click.argument("pipeline_file", type=click.Path(path_type=Path))
@click.option("--force", "force", multiple=True, metavar="STAGE",
              help="Re-run this stage (finetune, export, build, verify, bench, deploy, or all) or step "
                   "(build:onnxruntime_int8) even if unchanged.")
@click.option("--dry-run", is_flag=True, help="Only say which stages would run and why.")
@click.pass_context
def run(ctx: click.Context, pipeline_file: Path, force: Tuple[str, ...], dry_run: bool) -> None:
    """Run the pipeline in PIPELINE_FILE (YAML), skipping stages whose inputs did not change.

    A stage's options are its command's long options with underscores (edgexfer STAGE --help); see
    examples/pipeline.yaml.
    """
    from edgexfer.config import load_yaml
    from edgexfer.pipeline import run_pipeline, write_summary

    started = time.perf_counter()
    quiet = bool(ctx.find_root().obj.get("quiet"))
    data = load_yaml(pipeline_file)  # a missing or broken file is reported before the stages are loaded
    # relative paths inside the file are relative to the current directory
    result = run_pipeline(data, pipeline_stages(), base_dir=Path("."), force=force, dry_run=dry_run,
                          progress=not quiet, on_step=_step_printer(dry_run))
    if dry_run:
        click.echo(f"dry run: {sum(s.action == 'run' for s in result.steps)} of {len(result.steps)} steps "
                   "would run")
        return
    _finish(result, write_summary(result), started)


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
    from edgexfer.pipeline import DEMO_BASELINE, DEMO_TRANSFER, demo_pipeline, run_pipeline, write_summary

    started = time.perf_counter()
    quiet = bool(ctx.find_root().obj.get("quiet"))
    result = run_pipeline(demo_pipeline(out, quick), pipeline_stages(), base_dir=Path("."), force=force,
                          progress=not quiet, on_step=_step_printer(False))
    _finish(result, write_summary(result, transfer=DEMO_TRANSFER, baseline=DEMO_BASELINE), started)
