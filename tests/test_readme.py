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


def test_quick_start_names_a_real_module() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = _bash_blocks(readme)[0]
    module = re.search(r"python -m ([\w.]+)", setup).group(1)
    assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file()
