"""`config.json` of a Hugging Face encoder checkpoint, read into the few numbers that shape its graph.

Every key that changes the computation is either honoured or refused with a `CheckpointError` naming
it; keys that only matter for training (dropout, initializer range, loss `problem_type`) are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsejit.errors import CheckpointError

ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet")
HEADS = ("base", "sequence_classification", "token_classification", "question_answering")

# hidden_act values (transformers' ACT2FN names) the builder spells in ONNX
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish",
               "tanh")

_HEAD_OF_CLASS_SUFFIX = {
    "ForSequenceClassification": "sequence_classification",
    "ForTokenClassification": "token_classification",
    "ForQuestionAnswering": "question_answering",
    "Model": "base",
}


@dataclass(frozen=True)
class EncoderConfig:
    """The graph-shaping part of a checkpoint's config, the same fields for every architecture."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    pad_token_id: int
    embedding_size: int  # == hidden_size unless ALBERT / ELECTRA project the embeddings
    num_labels: int
    architectures: tuple[str, ...] = ()
    num_hidden_groups: int = 1  # ALBERT: layers share the weights of their group
    inner_group_num: int = 1
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def positions_from_ids(self) -> bool:
        """RoBERTa-style positions: counted over the non-pad tokens, offset by the pad id."""
        return self.model_type in ("roberta", "xlm-roberta", "mpnet")

    @property
    def has_token_types(self) -> bool:
        """Whether the model reads `token_type_ids` (its tokenizer produces them)."""
        return self.model_type in ("bert", "albert", "electra") and self.type_vocab_size > 1

    def default_head(self) -> str:
        """The head the checkpoint was saved with (`architectures` in config.json), else the bare encoder."""
        return head_of_architectures(self.architectures)


def head_of_architectures(architectures: Sequence[str]) -> str:
    """The head named by config.json's `architectures` (e.g. BertForQuestionAnswering), else "base"."""
    for name in architectures:
        for suffix, head in _HEAD_OF_CLASS_SUFFIX.items():
            if name.endswith(suffix):
                return head
    return "base"


def _require(raw: dict[str, Any], key: str, kind: type) -> Any:
    if key not in raw:
        raise CheckpointError(f"config.json has no {key!r}, which a {raw.get('model_type')} encoder needs", key)
    value = raw[key]
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CheckpointError(f"config.json key {key!r} must be {kind.__name__}, got {value!r}", key)
    return value


def _refuse_unless(raw: dict[str, Any], key: str, allowed: tuple[Any, ...], why: str) -> None:
    if key in raw and raw[key] not in allowed:
        raise CheckpointError(f"config.json has {key}={raw[key]!r}, which sparsejit does not build ({why}); "
                              f"supported: {list(allowed)}", key)


def parse_config(raw: dict[str, Any]) -> EncoderConfig:
    """Normalise the keys of one architecture's config (DistilBERT spells them differently)."""
    model_type = raw.get("model_type")
    if model_type == "deberta-v2":
        raise CheckpointError("model_type 'deberta-v2' is not supported: its disentangled relative attention "
                              "(content-to-position and position-to-content terms) has no builder yet; export "
                              "it to ONNX and compile the .onnx file instead", "model_type")
    if model_type not in ARCHITECTURES:
        raise CheckpointError(f"model_type {model_type!r} is not an encoder sparsejit builds from a checkpoint; "
                              f"supported: {list(ARCHITECTURES)} (or export the model to ONNX)", "model_type")
    _refuse_unless(raw, "position_embedding_type", ("absolute", None),
                   "only absolute position embeddings are built")
    _refuse_unless(raw, "is_decoder", (False, None), "encoders only")
    _refuse_unless(raw, "add_cross_attention", (False, None), "encoders only")
    if model_type == "distilbert":
        hidden, layers, heads = (_require(raw, k, int) for k in ("dim", "n_layers", "n_heads"))
        intermediate, act = _require(raw, "hidden_dim", int), raw.get("activation", "gelu")
        eps, type_vocab, embedding = 1e-12, 0, hidden
        act_key = "activation"
    else:
        hidden, layers, heads, intermediate = (_require(raw, k, int) for k in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"))
        act, act_key = raw.get("hidden_act", "gelu"), "hidden_act"
        eps = _require(raw, "layer_norm_eps", float) if "layer_norm_eps" in raw else 1e-12
        type_vocab = 0 if model_type == "mpnet" else int(raw.get("type_vocab_size", 2))
        embedding = int(raw.get("embedding_size") or hidden) if model_type in ("albert", "electra") else hidden
    if act not in ACTIVATIONS:
        raise CheckpointError(f"config.json has {act_key}={act!r}, which sparsejit does not build; "
                              f"supported: {list(ACTIVATIONS)}", act_key)
    if hidden % heads:
        key = "n_heads" if model_type == "distilbert" else "num_attention_heads"
        raise CheckpointError(f"hidden size {hidden} is not a multiple of {key}={heads}", key)
    if type_vocab < 0:
        raise CheckpointError(f"type_vocab_size must be >= 0, got {type_vocab}", "type_vocab_size")
    id2label = raw.get("id2label") or {}
    num_labels = int(raw.get("num_labels") or len(id2label) or 2)
    groups, inner = int(raw.get("num_hidden_groups", 1)), int(raw.get("inner_group_num", 1))
    if model_type == "albert" and (groups < 1 or layers % groups):
        raise CheckpointError(f"num_hidden_groups={groups} must divide num_hidden_layers={layers}",
                              "num_hidden_groups")
    return EncoderConfig(
        model_type=model_type, hidden_size=hidden, num_layers=layers, num_heads=heads,
        intermediate_size=intermediate, hidden_act=act, layer_norm_eps=float(eps),
        vocab_size=_require(raw, "vocab_size", int),
        max_positions=_require(raw, "max_position_embeddings", int), type_vocab_size=type_vocab,
        pad_token_id=int(raw.get("pad_token_id") or 0), embedding_size=embedding, num_labels=num_labels,
        architectures=tuple(raw.get("architectures") or ()), num_hidden_groups=groups,
        inner_group_num=inner if model_type == "albert" else 1, raw=raw)


def read_config(directory: Path) -> EncoderConfig:
    path = Path(directory) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return parse_config(raw)
