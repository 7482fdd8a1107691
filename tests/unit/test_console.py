"""The "next:" lines users paste into a shell quote the run directory."""

from __future__ import annotations

import subprocess

from edgexfer.console import shell_arg


def test_a_pasted_next_line_passes_a_hostile_run_directory_word_for_word(tmp_path):
    hostile = str(tmp_path / "my run; $(touch PWNED) `touch PWNED2` 'q\"")
    out = subprocess.run(["sh", "-c", f"printf '%s' {shell_arg(hostile)}"], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout
    assert out == hostile
    assert not list(tmp_path.glob("PWNED*"))
    assert shell_arg(tmp_path / "plain") == str(tmp_path / "plain")  # plain paths stay readable
