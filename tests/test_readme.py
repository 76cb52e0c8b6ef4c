"""The README's set-up commands stay the ones CI and users actually run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    test_command = next(b for b in _bash_blocks(readme) if "pytest" in b)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_quick_start_runs_the_declared_cli() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = _bash_blocks(readme)[0]
    assert "sparsejit serve" in setup
    assert 'sparsejit = "sparsejit.serve.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_python_quick_start_works() -> None:
    """The README's `python -c` line runs as written (default model fetched without torch)."""
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    code = re.search(r'`python -c "(.*?)"`', readme).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(1, 384)"
