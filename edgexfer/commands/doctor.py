"""``edgexfer doctor``: what this machine has (see edgexfer/doctor.py)."""

from __future__ import annotations

import json
from typing import Tuple

import click


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--require",
    "required",
    multiple=True,
    metavar="BACKEND",
    help="Exit 4 unless this backend is usable here (repeatable; for CI and device set-up).",
)
def doctor(as_json: bool, required: Tuple[str, ...]) -> None:
    """Installed versions, which backends are usable and why the others are not, CPU features
    (AVX-512, VNNI, AMX), GPU, TensorRT and JetPack/L4T versions, power mode."""
    from edgexfer.backends.base import BACKENDS
    from edgexfer.doctor import doctor_report, format_report
    from edgexfer.errors import BackendUnavailableError, ConfigError

    for name in required:
        if name not in BACKENDS:
            raise ConfigError(f"unknown backend '{name}' in --require; choose one of {', '.join(BACKENDS)}")
    report = doctor_report()
    click.echo(json.dumps(report, indent=2, default=str) if as_json else format_report(report))
    usable = {b["name"]: b for b in report["backends"]}
    missing = [f"{name} ({usable[name]['detail']})" for name in required if not usable[name]["usable"]]
    if missing:
        raise BackendUnavailableError(f"required backend not usable here: {'; '.join(missing)}")
    # With --json stdout stays one document; the pointer to the next step goes to stderr.
    click.echo(
        "\nnext: edgexfer finetune --help (or edgexfer build RUN --backend NAME for an exported run)",
        err=as_json,
    )
