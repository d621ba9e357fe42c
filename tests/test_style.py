"""The house formatter and linter (ruff format + ruff check) run as part of the test suite, so CI
enforces them with the README's one test command."""

import shutil
import subprocess

import pytest
from conftest import REPO_ROOT


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(args):
    ruff = shutil.which("ruff")
    assert ruff is not None, "ruff is not installed (requirements-dev.txt pins it)"
    done = subprocess.run([ruff, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
