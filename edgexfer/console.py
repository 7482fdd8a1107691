"""What the command line decided about output, readable from any layer without importing the CLI.

``edgexfer.cli`` sets the root context's ``quiet`` flag; commands read :func:`progress_enabled` from
here (importing ``edgexfer.cli`` from a command would make a cycle: the CLI loads the commands).
"""

from __future__ import annotations

import sys


def progress_enabled() -> bool:
    """Whether to draw progress bars: not with ``--quiet``, and not when stderr is not a terminal (CI
    logs and pipes get the final lines only)."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        root = ctx.find_root().obj
        if root and root.get("quiet"):
            return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def shell_arg(value: object) -> str:
    """``value`` quoted for a POSIX shell, for the "next:" lines users paste (a run directory may hold
    spaces, quotes or ``$(...)``)."""
    import shlex

    return shlex.quote(str(value))
