"""The shell commands README.md prints, read from its text, so tests run what the README says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def bash_commands(section: str) -> list[str]:
    """The commands of the ```bash blocks of a README section (continuation lines joined)."""
    text = README.read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, re.S)
    return [c.strip() for b in blocks for c in b.replace("\\\n", " ").splitlines() if c.strip()]


def command_argv(section: str, contains: str, prefix: list[str]) -> list[str]:
    """argv after ``prefix`` of the one command of ``section`` that contains ``contains``."""
    (cmd,) = [c for c in bash_commands(section) if contains in c]
    argv = shlex.split(cmd)
    assert argv[: len(prefix)] == prefix, cmd
    return argv[len(prefix) :]
