"""The ``edgexfer`` command line: a click group whose commands each build a config and call one
library function. Commands are imported only when run (or listed), and heavy libraries (torch,
onnxruntime, tensorrt, openvino) only inside the functions that use them, so ``edgexfer --help``
stays fast and works without the optional ones.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any, Dict, List, Optional, Tuple

import click

from edgexfer import __version__
from edgexfer.errors import EdgexferError

# command name -> (module, attribute, one-line help shown by `edgexfer --help` without importing)
COMMANDS: Dict[str, Tuple[str, str, str]] = {
    "finetune": ("edgexfer.commands.finetune", "finetune", "Fine-tune a torchvision classifier on your images."),
    "export": ("edgexfer.commands.export", "export", "Export a run's checkpoint to ONNX, optionally INT8."),
    "build": ("edgexfer.commands.build", "build", "Build a runtime artifact (ONNX Runtime, TensorRT, OpenVINO)."),
    "predict": ("edgexfer.commands.predict", "predict", "Top-k predictions for images from any artifact."),
    "verify": ("edgexfer.commands.verify", "verify", "Accuracy parity and latency of every built artifact."),
    "bench": ("edgexfer.commands.bench", "bench", "Latency matrix: models x backends x precisions x batch."),
    "deploy": ("edgexfer.commands.deploy", "deploy", "Build, verify and bench a run on devices over SSH."),
    "doctor": ("edgexfer.commands.doctor", "doctor", "What this machine has: libraries, backends, CPU, GPU."),
    "run": ("edgexfer.commands.run", "run", "Run the whole pipeline from a YAML config."),
    "demo": ("edgexfer.commands.run", "demo", "The offline demo on the embedded Fashion-MNIST data."),
}

log = logging.getLogger("edgexfer")


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        available = [name for name, (module, _, _) in COMMANDS.items() if _module_exists(module)]
        return sorted(set(available) | set(super().list_commands(ctx)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        if cmd_name in COMMANDS:
            module_name, attribute, _ = COMMANDS[cmd_name]
            if not _module_exists(module_name):
                return None
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx) if name in COMMANDS]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(module_name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module_name) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="edgexfer")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """edgexfer: fine-tune a pretrained vision model, export it to ONNX, quantize it to INT8,
    build it for TensorRT / ONNX Runtime / OpenVINO and prove it still works.

    \b
    Typical run:
      edgexfer finetune --model resnet18 --data DIR --out runs/r18
      edgexfer export runs/r18 --int8 --target all
      edgexfer build runs/r18 --backend onnxruntime --precision int8
      edgexfer verify runs/r18
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    setup_logging(level)


def setup_logging(level: int) -> None:
    """Plain, prefix-free messages on stderr for the user; timestamps only at debug level."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(asctime)s %(name)s %(levelname)s: %(message)s" if level <= logging.DEBUG else "%(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("edgexfer")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# Everything str.splitlines() breaks on (\n, \r, \v, \f, file/group/record separators, NEL, U+2028/9).
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def one_line(message: str) -> str:
    """``message`` as a single line: line breaks (from a library's error or a user's key or file name)
    are shown escaped, so the CLI's error stays one line that scripts can grep."""
    text = message.strip()
    for char in _LINE_BREAKS:
        text = text.replace(char, ascii(char)[1:-1])
    return text


def main(argv: Optional[List[str]] = None) -> Any:
    """Console-script entry point: EdgexferError -> one line on stderr and its exit code."""
    # The group callback stores its parsed options here, so --debug is the option itself, never an
    # option's value or a positional argument that happens to read "--debug".
    state: Dict[str, Any] = {}
    try:
        return cli.main(args=argv, prog_name="edgexfer", standalone_mode=False, obj=state)
    except click.exceptions.Abort:
        click.echo("edgexfer: interrupted; artifacts written before the interruption are intact", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("edgexfer: interrupted; artifacts written before the interruption are intact", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgexferError as exc:
        if state.get("debug"):
            raise
        click.echo(f"edgexfer: error: {one_line(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the last line of defence for the user
        if state.get("debug"):
            raise
        reason = one_line(str(exc))
        click.echo(f"edgexfer: internal error: {type(exc).__name__}: {reason} (rerun with --debug for the "
                   "traceback and report it)", err=True)
        sys.exit(1)
