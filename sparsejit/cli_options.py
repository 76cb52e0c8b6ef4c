"""Option values the `sparsejit` commands parse the same way (cheap to import: click only)."""

from __future__ import annotations

import json
from typing import Any

import click


def parse_sequence_lengths(value: str | None) -> int | list[int] | None:
    """``"128"`` -> 128, ``"64,128"`` / ``"[64,128]"`` -> [64, 128]; None stays None."""
    if value is None:
        return None
    parts = [p for p in value.strip().strip("[]").replace(" ", "").split(",") if p]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"expected an int or a list of ints, got {value!r}") from None
    if not numbers:
        raise click.BadParameter("give at least one sequence length")
    return numbers[0] if len(numbers) == 1 else numbers


def parse_task_kwargs(value: str | None) -> dict[str, Any]:
    """The JSON object of ``--kwargs`` ({} when not given)."""
    if not value:
        return {}
    try:
        options = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--kwargs is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise click.BadParameter(f"--kwargs must be a JSON object, got {value!r}")
    return options
