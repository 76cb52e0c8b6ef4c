"""The pooling and normalisation a sentence-transformers model directory declares (`modules.json`).

sentence-transformers' `encode` runs the modules listed there: Transformer, then Pooling (its
`config.json` names the mode), then optionally Normalize. The embeddings pipeline takes these as its
defaults so its vectors equal `encode`'s; modules it cannot run (Dense, ...) are refused by name rather
than silently skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sparsejit.errors import ModelLoadError

_MODE_TO_STRATEGY = {"pooling_mode_mean_tokens": "reduce_mean", "pooling_mode_cls_token": "cls_token",
                     "pooling_mode_max_tokens": "reduce_max"}
_RUN_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class SentenceEmbeddingConfig:
    extraction_strategy: str
    normalize: bool


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def read_sentence_embedding_config(directory: Path) -> SentenceEmbeddingConfig | None:
    """The pooling strategy and normalisation of `directory`'s modules.json; None when it has none."""
    modules_path = Path(directory) / "modules.json"
    if not modules_path.is_file():
        return None
    modules = _read_json(modules_path)
    if not isinstance(modules, list):
        raise ModelLoadError(f"{modules_path} is not a list of modules")
    strategy, normalize = None, False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1] if isinstance(module, dict) else ""
        if kind not in _RUN_MODULES:
            raise ModelLoadError(f"{modules_path} lists a {kind or module!r} module, which the embeddings pipeline "
                                 f"does not run (it runs {list(_RUN_MODULES)}): its vectors would differ from "
                                 "sentence-transformers'")
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            config = _read_json(Path(directory) / str(module.get("path", "")) / "config.json")
            if not isinstance(config, dict):
                raise ModelLoadError(f"the Pooling module config of {directory} is not a JSON object")
            modes = [key for key, value in config.items() if key.startswith("pooling_mode_") and value]
            unsupported = [m for m in modes if m not in _MODE_TO_STRATEGY]
            if unsupported or len(modes) != 1:
                raise ModelLoadError(f"the Pooling module of {directory} uses {modes}; the embeddings pipeline "
                                     f"pools one way at a time, one of {list(_MODE_TO_STRATEGY)}")
            strategy = _MODE_TO_STRATEGY[modes[0]]
    if strategy is None:
        return None
    return SentenceEmbeddingConfig(strategy, normalize)


@lru_cache(maxsize=64)
def read_prompts(directory: str) -> dict[str, str]:
    """The named prompts of `directory`'s config_sentence_transformers.json ({} when absent or unreadable):
    text put before an input when a caller asks for the prompt by name (TEI's `prompt_name`)."""
    try:
        prompts = json.loads((Path(directory) / "config_sentence_transformers.json").read_text()).get("prompts")
    except (OSError, ValueError, AttributeError):
        return {}
    return dict(prompts) if isinstance(prompts, dict) else {}
