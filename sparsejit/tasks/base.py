"""`Pipeline`: text in, answers out. The shape of Hugging Face `transformers` pipelines.

Every task does ``preprocess -> engine forward -> postprocess``. Options are split once by
``_sanitize_parameters`` into (preprocess, forward, postprocess) keyword dicts — at construction and again
for per-call overrides. Tokenisation uses `tokenizers` (batched); padding and truncation are set by the
pipeline from its sequence-length buckets, never inherited from ``tokenizer.json``. Rows are sorted by
length and run in chunks of the engine's batch size, so each chunk lands in the smallest bucket that fits.

Each task class declares pydantic ``input_schema`` / ``output_schema`` (reused by the REST server):
``pipeline.run(request)`` validates a request against the input schema and returns the output schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel
from tokenizers import Encoding, Tokenizer

from sparsejit.checkpoints import CheckpointSource, is_checkpoint_dir
from sparsejit.errors import InvalidInputError, ModelLoadError, SequenceTooLongError
from sparsejit.graph.onnx_import import read_model_proto

__all__ = [
    "Encoded",
    "ModelFiles",
    "Pipeline",
    "load_config",
    "load_tokenizer",
    "model_position_limit",
    "pad_token_id",
    "resolve_model_files",
    "suggest_buckets",
]

#: engine inputs a pipeline knows how to fill from a tokenizer encoding.
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


# ------------------------------------------------------------------------------------------ model files


@dataclass
class ModelFiles:
    """Where a pipeline's model lives: the ONNX model (path or in-memory proto) or a Hugging Face
    checkpoint, and the directory that holds ``tokenizer.json`` / ``config.json``."""

    model: Path | CheckpointSource | Any  # Path to an .onnx file, a checkpoint, or an onnx.ModelProto
    directory: Path

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / "tokenizer.json"

    @property
    def config_path(self) -> Path:
        return self.directory / "config.json"


def resolve_model_files(model_path: str | os.PathLike | ModelFiles, head: str | None = None) -> ModelFiles:
    """Accept a directory holding ``model.onnx`` (Hugging Face layout), an ``.onnx`` file beside its
    ``tokenizer.json`` / ``config.json``, or a checkpoint directory (config.json + safetensors, no
    model.onnx), whose encoder is built with ``head`` (None: the one its config names)."""
    if isinstance(model_path, ModelFiles):
        return model_path
    path = Path(model_path).expanduser()
    if is_checkpoint_dir(path):
        onnx_path: Path | CheckpointSource = CheckpointSource(path, head)
        directory = path
    elif path.is_dir():
        onnx_path = path / "model.onnx"
        if not onnx_path.is_file():
            candidates = sorted(path.glob("*.onnx"))
            if len(candidates) != 1:
                raise ModelLoadError(f"{path} has no model.onnx (found {[c.name for c in candidates]}) and is "
                                     "not a checkpoint (config.json + *.safetensors); pass the .onnx file itself")
            onnx_path = candidates[0]
        directory = path
    elif path.is_file():
        onnx_path, directory = path, path.parent
    else:
        raise ModelLoadError(f"model path {path} does not exist: give a directory with model.onnx, "
                             "tokenizer.json and config.json, or an .onnx file beside them")
    if not (directory / "tokenizer.json").is_file():
        raise ModelLoadError(f"no tokenizer.json in {directory}: a pipeline needs the model's "
                             "Hugging Face fast tokenizer file beside the ONNX model")
    return ModelFiles(onnx_path, directory)


def load_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict ({} when absent)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def model_position_limit(config: Mapping[str, Any]) -> int | None:
    """The longest input the model's position table allows (config.json ``max_position_embeddings``;
    2 fewer where positions start after the padding index, as RoBERTa's and MPNet's do), or None."""
    limit = int(config.get("max_position_embeddings") or 0)
    if not limit:
        return None
    return limit - 2 if config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "mpnet") else limit


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load ``tokenizer.json`` (or a directory holding it) with padding and truncation switched off."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad files
        raise ModelLoadError(f"cannot load tokenizer {path}: {exc}") from exc
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def pad_token_id(tokenizer: Tokenizer, config: Mapping[str, Any], tokenizer_path: Path) -> int:
    """The id padded positions get: tokenizer.json's padding, else config.json's, else the pad token's."""
    try:
        baked = json.loads(Path(tokenizer_path).read_text()).get("padding") or {}
    except (OSError, json.JSONDecodeError):
        baked = {}
    if "pad_id" in baked and baked.get("pad_token") is not None:
        return int(baked["pad_id"])
    for token in ("[PAD]", "<pad>", "<PAD>"):
        tid = tokenizer.token_to_id(token)
        if tid is not None:
            return int(tid)
    return int(config.get("pad_token_id") or 0)


# ------------------------------------------------------------------------------------------- pipeline


@dataclass
class Encoded:
    """One user input after preprocessing: engine rows (1-D int64 arrays, one dict per row — QA windows
    give several rows per input) and whatever postprocessing needs (``meta``)."""

    rows: list[dict[str, np.ndarray]]
    meta: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """Base class of task pipelines. Use :meth:`Pipeline.create` to build one by task name.

    Subclasses set ``task``, ``input_schema``, ``output_schema`` and implement ``_sanitize_parameters``,
    ``_parse_inputs``, ``preprocess`` and ``postprocess``; optionally ``default_model`` (a callable
    returning a path or :class:`ModelFiles`) and ``_prepare_model`` (to edit the graph before compiling).
    """

    task: ClassVar[str] = ""
    input_schema: ClassVar[type[BaseModel]]
    output_schema: ClassVar[type[BaseModel]]
    default_model: ClassVar[Callable[[], str | os.PathLike | ModelFiles] | None] = None
    checkpoint_head: ClassVar[str | None] = None  # the head built from a checkpoint directory for this task

    def __init__(self, model_path: str | os.PathLike | ModelFiles | None = None, *, batch_size: int = 1,
                 sequence_length: int | Sequence[int] = 128, num_threads: int | None = None,
                 precision: str = "fp32", max_batch_tokens: int | None = None, **task_kwargs: Any) -> None:
        from sparsejit.plan.buckets import token_budget_buckets
        from sparsejit.plan.engine import compile as compile_engine

        if model_path is None:
            if self.default_model is None:
                raise InvalidInputError(f"task {self.task!r} has no default model: pass model_path")
            model_path = type(self).default_model()
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        self.files = resolve_model_files(model_path, self.checkpoint_head)
        self.config = load_config(self.files.directory)
        self.tokenizer = load_tokenizer(self.files.tokenizer_path)
        self._tokenizer_variants: dict[str, Tokenizer] = {}  # left-truncating / untruncated copies
        self.pad_token_id = pad_token_id(self.tokenizer, self.config, self.files.tokenizer_path)
        lengths = [sequence_length] if isinstance(sequence_length, int) else list(sequence_length)
        if not lengths or any(int(s) < 2 for s in lengths):
            raise InvalidInputError(f"sequence_length must be an int >= 2 or a non-empty list of them, "
                                    f"got {sequence_length!r}")
        self.model_max_length = model_position_limit(self.config)
        if self.model_max_length and max(lengths) > self.model_max_length:
            raise InvalidInputError(f"sequence_length {max(lengths)} exceeds the model's maximum "
                                    f"{self.model_max_length} (config.json max_position_embeddings)")
        self.sequence_lengths = sorted({int(s) for s in lengths})
        self._init_params = dict(task_kwargs)
        # Validate task options before the (slow) compile.
        self._params = self._checked_sanitize(task_kwargs)
        self.max_batch_tokens = max_batch_tokens
        shapes: dict[str, Any] = {"batch_size": batch_size, "sequence_length": self.sequence_lengths}
        if max_batch_tokens is not None:  # checked before the compile
            shapes = {"buckets": token_budget_buckets(self.sequence_lengths, max_batch_tokens)}
        model = self._prepare_model(self.files)
        self.engine = compile_engine(model, num_threads=num_threads, pad_values=self._pad_values(model),
                                     precision=precision, **shapes)
        missing = [n for n in self.engine.input_names if n not in _KNOWN_INPUTS]
        if missing:
            raise ModelLoadError(f"model inputs {missing} cannot be filled from a tokenizer; a pipeline "
                                 f"supports {list(_KNOWN_INPUTS)}")
        self.batch_size = self.engine.batch_size
        self.configure_tokenizer()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, task: str, model_path: str | os.PathLike | ModelFiles | None = None, batch_size: int = 1,
               sequence_length: int | Sequence[int] = 128, num_threads: int | None = None,
               precision: str = "fp32", max_batch_tokens: int | None = None, **task_kwargs: Any) -> Pipeline:
        """Build the pipeline registered for ``task`` (aliases, any case, ``-``/``_`` interchangeable).

        ``model_path``: a directory with model.onnx, tokenizer.json, config.json, or an .onnx file beside
        them; None uses the task's default model when it has one. ``sequence_length`` may be a list of
        buckets: one plan per length sharing the weights; each batch runs in the smallest that fits.
        ``precision="bf16"`` runs the matrix-product weights in bf16 (see `sparsejit.compile`).
        ``max_batch_tokens`` replaces ``batch_size`` by a token budget: an engine batch holds as many rows
        as fit ``max_batch_tokens`` padded positions (many short rows or few long ones).
        """
        from sparsejit.tasks.registry import get_pipeline_class

        klass = get_pipeline_class(task)
        return klass(model_path, batch_size=batch_size, sequence_length=sequence_length,
                     num_threads=num_threads, precision=precision, max_batch_tokens=max_batch_tokens,
                     **task_kwargs)

    def _prepare_model(self, files: ModelFiles) -> Any:
        """The model handed to the compiler (a path or ModelProto). Override to cut or edit the graph."""
        return files.model

    def _pad_values(self, model: Any) -> dict[str, int] | None:
        import onnx

        if isinstance(model, CheckpointSource):  # built graphs read input_ids (+ attention_mask, token types)
            return {"input_ids": self.pad_token_id}
        proto = model if isinstance(model, onnx.ModelProto) else read_model_proto(model)
        inits = {t.name for t in proto.graph.initializer}
        names = [i.name for i in proto.graph.input if i.name not in inits]
        return {"input_ids": self.pad_token_id} if "input_ids" in names else None

    def configure_tokenizer(self) -> None:
        """Set truncation to the largest bucket (longest-first for pairs), no padding (done per chunk)."""
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length, strategy="longest_first")

    @property
    def max_length(self) -> int:
        """The largest sequence-length bucket: longer inputs are truncated (or windowed for QA)."""
        return self.sequence_lengths[-1]

    @property
    def id2label(self) -> dict[int, str]:
        """Label names from config.json (``LABEL_i`` when absent)."""
        raw = self.config.get("id2label") or {}
        labels = {int(k): str(v) for k, v in raw.items()}
        n = int(self.config.get("num_labels") or 0) or len(labels)
        return {i: labels.get(i, f"LABEL_{i}") for i in range(n)} if n else labels

    # ---- options ------------------------------------------------------------------------------
    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Split task options into (preprocess, forward, postprocess) kwargs. Only options given are set."""
        if kwargs:
            raise TypeError(f"unexpected options {sorted(kwargs)}")
        return {}, {}, {}

    def _checked_sanitize(self, kwargs: Mapping[str, Any]) -> tuple[dict, dict, dict]:
        try:
            return self._sanitize_parameters(**kwargs)
        except TypeError as exc:
            raise InvalidInputError(f"{type(self).__name__}: {exc}") from exc

    def _call_params(self, kwargs: Mapping[str, Any]) -> tuple[dict, dict, dict]:
        if not kwargs:
            return self._params
        pre, fwd, post = self._checked_sanitize(kwargs)
        return ({**self._params[0], **pre}, {**self._params[1], **fwd}, {**self._params[2], **post})

    # ---- running ------------------------------------------------------------------------------
    def __call__(self, inputs: Any = None, /, **kwargs: Any) -> Any:
        """Run the task on one input or a list of inputs; returns one result or a list of them.

        An instance of ``input_schema`` is accepted too. Keyword options override the pipeline's for
        this call only.
        """
        items, single, options = self.parse(inputs, **kwargs)
        if not items:
            return []
        return self.format(self.run_items(items, options), single)

    # ---- the contract every caller uses (this __call__, the server's batcher, batch runners) ----------
    def parse(self, inputs: Any = None, /, **kwargs: Any) -> tuple[list[Any], bool, dict[str, Any]]:
        """A call's arguments (or an ``input_schema`` instance) as (items, single, options); the options
        are validated here, so a bad one fails before any work is queued."""
        if isinstance(inputs, BaseModel):
            kwargs = {**inputs.model_dump(exclude_unset=True), **kwargs}
            inputs = None
        items, single, options = self._parse_inputs(inputs, dict(kwargs))
        self._call_params(options)
        return list(items), single, options

    def run_items(self, items: list[Any], options: Mapping[str, Any]) -> list[Any]:
        """One result per item (preprocess -> forward -> postprocess); items of several calls with equal
        options may be run together and their results split back in order."""
        if not items:
            return []
        return self.run_encoded(self.encode_items(items, options), options)

    def encode_items(self, items: list[Any], options: Mapping[str, Any]) -> list[Encoded]:
        """The first step of `run_items`: tokenise ``items`` with a call's options (the server does this
        before queueing, so it knows each request's tokens)."""
        pre, _, _ = self._call_params(options)
        return self.preprocess(items, **pre)

    def run_encoded(self, encoded: list[Encoded], options: Mapping[str, Any]) -> list[Any]:
        """The rest of `run_items`: forward and postprocess tokenised items (of calls with equal options)."""
        if not encoded:
            return []
        _, fwd, post = self._call_params(options)
        outputs = self.forward(encoded, **fwd)
        return [self.postprocess(enc, out, **post) for enc, out in zip(encoded, outputs, strict=True)]

    def padded_tokens(self, encoded: Encoded) -> int:
        """Positions one tokenised item occupies in engine batches (its rows at their bucket lengths)."""
        return sum(self.bucket_length(len(row["input_ids"])) for row in encoded.rows)

    def format(self, results: list[Any], single: bool) -> Any:
        """The value a call returns for its `results` (one of them when the call gave one input)."""
        return self._format_results(results, single)

    def run(self, request: BaseModel | Mapping[str, Any]) -> BaseModel:
        """Server entry point: validate ``request`` with ``input_schema``, return an ``output_schema``."""
        if not isinstance(request, self.input_schema):
            request = self.input_schema.model_validate(request)
        result = self(request)
        return self.output_schema.model_validate(to_jsonable(result))

    def _parse_inputs(self, inputs: Any, kwargs: dict[str, Any]) -> tuple[list[Any], bool, dict[str, Any]]:
        """Return (items, single, remaining option kwargs) from the call's arguments."""
        raise NotImplementedError

    def _format_results(self, results: list[Any], single: bool) -> Any:
        return results[0] if single else results

    def preprocess(self, items: list[Any], **kwargs: Any) -> list[Encoded]:
        """Tokenise a list of items (batched) into :class:`Encoded` rows."""
        raise NotImplementedError

    def postprocess(self, encoded: Encoded, outputs: list[dict[str, np.ndarray]], **kwargs: Any) -> Any:
        """Turn one item's engine outputs (one dict per row, each output's batch row) into a result."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str | tuple[str, str]],
               add_special_tokens: bool = True) -> list[Encoding]:
        """Batched tokenisation with the pipeline's truncation (texts or (text, text_pair) tuples)."""
        return self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)

    @staticmethod
    def truncation_options(truncate: bool | None, truncation_direction: str | None) -> dict[str, Any]:
        """The preprocess options of a call's `truncate` / `truncation_direction` (only those given)."""
        pre: dict[str, Any] = {}
        if truncate is not None:
            pre["truncate"] = bool(truncate)
        if truncation_direction is not None:
            direction = str(truncation_direction).lower()
            if direction not in ("left", "right"):
                raise InvalidInputError(f"truncation_direction must be left or right, got {truncation_direction!r}")
            pre["truncation_direction"] = direction
        return pre

    def encode_texts(self, texts: Sequence[str | tuple[str, str]], truncate: bool = True,
                     direction: str = "right") -> list[Encoding]:
        """Tokenise texts; one longer than the largest sequence length is cut at `direction` when
        `truncate`, else raises `SequenceTooLongError` with its token count and the limit."""
        encodings = self._tokenizer_for(truncate, direction).encode_batch(list(texts))
        if not truncate:
            for i, encoding in enumerate(encodings):
                if len(encoding.ids) > self.max_length:
                    raise SequenceTooLongError(self._too_long(i, len(encoding.ids)))
        return encodings

    def fit_length(self, ids: np.ndarray, index: int, truncate: bool = True, direction: str = "right") -> np.ndarray:
        """Token ids given by the caller, cut (or refused) as `encode_texts` does with text."""
        if len(ids) <= self.max_length:
            return ids
        if not truncate:
            raise SequenceTooLongError(self._too_long(index, len(ids)))
        return ids[-self.max_length:] if direction == "left" else ids[:self.max_length]

    def _too_long(self, index: int, tokens: int) -> str:
        limit = f"{self.max_length} tokens (the largest compiled sequence length"
        if self.model_max_length:
            limit += f"; the model's own limit is {self.model_max_length} positions"
        return f"input {index} has {tokens} tokens, more than {limit}): shorten it or allow truncation"

    def _tokenizer_for(self, truncate: bool, direction: str) -> Tokenizer:
        if truncate and direction == "right":
            return self.tokenizer
        key = "left" if truncate else "none"
        variant = self._tokenizer_variants.get(key)
        if variant is None:
            variant = Tokenizer.from_str(self.tokenizer.to_str())
            variant.no_padding()
            if truncate:
                variant.enable_truncation(max_length=self.max_length, strategy="longest_first", direction="left")
            else:
                variant.no_truncation()
            self._tokenizer_variants[key] = variant
        return variant

    def rows_from_encoding(self, encoding: Encoding) -> dict[str, np.ndarray]:
        """Engine row (1-D int64 arrays) from a tokenizer encoding."""
        ids = np.asarray(encoding.ids, dtype=np.int64)
        return {
            "input_ids": ids,
            "attention_mask": np.asarray(encoding.attention_mask, dtype=np.int64),
            "token_type_ids": np.asarray(encoding.type_ids, dtype=np.int64),
        }

    def forward(self, encoded: list[Encoded], **kwargs: Any) -> list[list[dict[str, np.ndarray]]]:
        """Run every row through the engine in the batches `chunk_rows` forms, each padded to its longest
        row (the engine then pads to the bucket). Returns, per item, per row, each output's row —
        sequence outputs have the chunk's padded length, not the row's."""
        flat = [(i, j, row) for i, enc in enumerate(encoded) for j, row in enumerate(enc.rows)]
        results: list[list[dict[str, np.ndarray]]] = [[{} for _ in enc.rows] for enc in encoded]
        for chunk in self.chunk_rows([len(row["input_ids"]) for _, _, row in flat]):
            out = self.run_batch([flat[k][2] for k in chunk])
            for b, k in enumerate(chunk):
                i, j, _ = flat[k]
                results[i][j] = {name: arr[b] for name, arr in out.items()}
        return results

    def bucket_length(self, tokens: int) -> int:
        """The sequence bucket a row of ``tokens`` tokens runs in (its padded length)."""
        return next((s for s in self.sequence_lengths if s >= tokens), self.max_length)

    def chunk_rows(self, lengths: Sequence[int], by_bucket: bool = False) -> list[list[int]]:
        """Row indices grouped into engine batches: sorted by length, each batch at most the rows the
        engine takes at its longest row's bucket. A batch spans two sequence buckets only when the engine
        has one batch size (a call costs its full batch there) and ``by_bucket`` is off."""
        split = by_bucket or len({b for b, _ in self.engine.buckets}) > 1
        chunks: list[list[int]] = []
        for k in sorted(range(len(lengths)), key=lambda k: lengths[k]):
            bucket = self.bucket_length(lengths[k])
            if (chunks and len(chunks[-1]) < self.engine.max_batch(bucket)
                    and (not split or self.bucket_length(lengths[chunks[-1][0]]) == bucket)):
                chunks[-1].append(k)
            else:
                chunks.append([k])
        return chunks

    def run_batch(self, rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Pad ``rows`` (at most the engine's batch at their length) into one batch and run the engine."""
        length = max(len(r["input_ids"]) for r in rows)
        if length > self.max_length:
            raise InvalidInputError(f"row of {length} tokens exceeds the largest bucket {self.max_length}")
        if len(rows) > self.engine.max_batch(length):
            raise InvalidInputError(f"{len(rows)} rows exceed the batch size {self.engine.max_batch(length)} "
                                    f"at {length} tokens")
        feed = {}
        for name in self.engine.input_names:
            if name == "position_ids":
                feed[name] = np.broadcast_to(np.arange(length, dtype=np.int64), (len(rows), length)).copy()
                continue
            fill = self.pad_token_id if name == "input_ids" else 0
            arr = np.full((len(rows), length), fill, dtype=np.int64)
            for b, row in enumerate(rows):
                arr[b, :len(row[name])] = row[name]
            feed[name] = arr
        return self.engine.run(feed)

    def __repr__(self) -> str:
        model = self.files.model if isinstance(self.files.model, Path) else "<in-memory>"
        return (f"{type(self).__name__}(task={self.task!r}, model={model}, "
                f"batch_size={self.batch_size}, sequence_lengths={self.sequence_lengths})")


# ---------------------------------------------------------------------------------------------- helpers


def to_jsonable(value: Any) -> Any:
    """numpy arrays / scalars inside nested lists and dicts -> plain Python (for schemas and JSON)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def suggest_buckets(texts: Iterable[str | tuple[str, str]], tokenizer_or_pipeline: Any,
                    quantiles: Sequence[float] = (0.5, 0.9, 1.0), multiple: int = 16,
                    max_length: int | None = None) -> list[int]:
    """Suggest sequence-length buckets from the token lengths of a sample of user texts.

    Each quantile of the lengths (special tokens included; the smallest observed length with at least
    that fraction of texts at or below it) is rounded up to a multiple of ``multiple``
    and capped at ``max_length`` (default: the pipeline's model maximum, else 512); duplicates dropped.
    ``tokenizer_or_pipeline``: a :class:`Pipeline`, a ``tokenizers.Tokenizer``, or a path to a
    tokenizer.json / model directory.
    """
    if isinstance(tokenizer_or_pipeline, Pipeline):
        tok, cap = tokenizer_or_pipeline.tokenizer, tokenizer_or_pipeline.model_max_length
    elif isinstance(tokenizer_or_pipeline, Tokenizer):
        tok, cap = tokenizer_or_pipeline, None
    else:
        path = Path(tokenizer_or_pipeline)
        tok = load_tokenizer(path)
        cfg = load_config(path if path.is_dir() else path.parent)
        cap = model_position_limit(cfg)
    cap = max_length or cap or 512
    if multiple < 1:
        raise InvalidInputError(f"multiple must be >= 1, got {multiple}")
    if not quantiles or any(not 0 <= q <= 1 for q in quantiles):
        raise InvalidInputError(f"quantiles must be in [0, 1], got {quantiles}")
    tok = Tokenizer.from_str(tok.to_str())  # a copy: never change the caller's truncation settings
    tok.no_truncation()
    tok.no_padding()
    texts = list(texts)
    if not texts:
        raise InvalidInputError("suggest_buckets needs at least one text")
    lengths = np.array([len(e.ids) for e in tok.encode_batch(texts)])
    buckets = set()
    for q in sorted(quantiles):
        n = int(np.quantile(lengths, q, method="inverted_cdf"))  # an observed length
        buckets.add(min(cap, max(multiple, -(-n // multiple) * multiple)))
    return sorted(buckets)
