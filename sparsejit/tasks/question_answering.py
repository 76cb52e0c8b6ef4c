"""Extractive question answering with long contexts split into overlapping windows.

Follows the inference of the `transformers` 4.x ``QuestionAnsweringPipeline`` (fast-tokenizer path):

1. ``question`` + ``context`` are encoded as a pair, truncating only the context, with
   ``max_length`` = the pipeline's largest sequence bucket and ``stride`` = ``doc_stride``; every
   overflowing piece becomes another window (``[CLS] question [SEP] context piece [SEP]``).
2. Each window's start/end logits are softmaxed over its context tokens plus ``[CLS]``; question,
   special and padding tokens are masked out.
3. Candidate spans ``start <= end < start + max_answer_length`` inside the context score
   ``p_start * p_end``; ``[CLS]`` is excluded (it carries the "no answer" score, used when
   ``handle_impossible_answer`` is set: the minimum over windows of ``p_start[CLS] * p_end[CLS]``).
4. Spans are widened to whole words and mapped to character offsets into the context.

Differences from `transformers`: ``max_question_length`` is honoured (the 4.x fast path ignored it), and
with ``top_k > 1`` a span found in several overlapping windows is reported once, with its best score.
Windows of every question in a call are batched together, each batch going to the smallest bucket
that fits it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field, RootModel
from tokenizers import Encoding, Tokenizer

from sparsejit.errors import InvalidInputError, ModelLoadError
from sparsejit.tasks.base import Encoded, Pipeline

__all__ = ["Answer", "QuestionAnsweringInput", "QuestionAnsweringOutput", "QuestionAnsweringPipeline",
           "answers_for_example", "make_windows",
           "truncate_questions"]

#: logit given to tokens that can never be part of an answer (as in `transformers`).
_MASKED = -10000.0


@dataclass
class Window:
    """One model input: a question with one piece of its context."""

    example: int  # index of the (question, context) pair this window belongs to
    encoding: Encoding
    context_mask: np.ndarray  # bool [len]: True for tokens of the context (possible answer tokens)
    cls_index: int | None  # position of the [CLS]/<s> token, if any


@dataclass
class Span:
    """A candidate answer: character offsets into the context and its probability."""

    score: float
    start: int
    end: int


# ---------------------------------------------------------------------------------------- tokenising


def truncate_questions(tokenizer: Tokenizer, questions: Sequence[str],
                       max_question_length: int) -> tuple[list[str], list[int]]:
    """Questions cut after their first ``max_question_length`` tokens, and their token counts.

    ``tokenizer`` must have truncation and padding disabled.
    """
    texts, lengths = [], []
    for question, enc in zip(questions, tokenizer.encode_batch(list(questions), add_special_tokens=False),
                             strict=True):
        n = len(enc.ids)
        if n > max_question_length:
            question = question[: enc.offsets[max_question_length - 1][1]]
            # re-count: a cut inside a word may tokenize differently
            n = len(tokenizer.encode(question, add_special_tokens=False).ids)
        texts.append(question)
        lengths.append(n)
    return texts, lengths


def make_windows(window_tokenizer: Tokenizer, plain_tokenizer: Tokenizer, questions: Sequence[str],
                 contexts: Sequence[str], max_seq_len: int, doc_stride: int, max_question_length: int,
                 cls_token_id: int | None) -> list[Window]:
    """Encode every (question, context) pair into one or more overlapping windows.

    ``window_tokenizer`` must be set to truncate ``only_second`` at ``max_seq_len`` with stride
    ``doc_stride`` and not to pad; ``plain_tokenizer`` must neither truncate nor pad.
    """
    questions, q_lens = truncate_questions(plain_tokenizer, questions, max_question_length)
    c_lens = [len(e.ids) for e in plain_tokenizer.encode_batch(list(contexts), add_special_tokens=False)]
    added = plain_tokenizer.num_special_tokens_to_add(True)
    for i, (q_len, c_len) in enumerate(zip(q_lens, c_lens, strict=True)):
        room = max_seq_len - q_len - added
        if q_len + c_len + added <= max_seq_len:
            continue
        if room < 1:
            raise InvalidInputError(
                f"question {i} takes {q_len} tokens, leaving no room for the context in a sequence of "
                f"{max_seq_len}: lower max_question_length or use a longer sequence_length")
        if doc_stride >= room:
            raise InvalidInputError(
                f"doc_stride={doc_stride} must be smaller than the room left for the context in each "
                f"window ({room} tokens for question {i} at sequence length {max_seq_len}): lower "
                f"doc_stride or use a longer sequence_length")
    encodings = window_tokenizer.encode_batch(list(zip(questions, contexts, strict=True)))
    windows = []
    for example, first in enumerate(encodings):
        for enc in [first, *first.overflowing]:
            seq_ids = enc.sequence_ids
            context_mask = np.fromiter((s == 1 for s in seq_ids), dtype=bool, count=len(seq_ids))
            cls_index = None
            if cls_token_id is not None:
                hits = [k for k, t in enumerate(enc.ids) if t == cls_token_id]
                cls_index = hits[0] if hits else None
            windows.append(Window(example, enc, context_mask, cls_index))
    return windows


# ---------------------------------------------------------------------------------------- decoding


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def window_spans(start_logits: np.ndarray, end_logits: np.ndarray, window: Window, top_k: int,
                 max_answer_length: int) -> tuple[list[tuple[int, int, float]], float]:
    """Best ``top_k`` token spans ``(start, end, score)`` of one window, and its no-answer score.

    Scores are ``p_start * p_end`` with the softmax taken over the context tokens and ``[CLS]``.
    Ties keep the lowest (start, end), as ``np.argmax`` does in `transformers`.
    """
    allowed = window.context_mask.copy()
    if window.cls_index is not None:
        allowed[window.cls_index] = True
    start = _softmax(np.where(allowed, start_logits.astype(np.float64), _MASKED))
    end = _softmax(np.where(allowed, end_logits.astype(np.float64), _MASKED))
    null_score = float(start[window.cls_index] * end[window.cls_index]) if window.cls_index is not None \
        else 0.0
    ctx = np.flatnonzero(window.context_mask)
    if ctx.size == 0:
        return [], null_score
    # Context tokens are contiguous; score every (start, end) pair among them.
    lo, hi = int(ctx[0]), int(ctx[-1]) + 1
    outer = np.outer(start[lo:hi], end[lo:hi])
    valid = np.triu(np.ones(outer.shape, dtype=bool)) & ~np.triu(np.ones(outer.shape, dtype=bool),
                                                                 max_answer_length)
    valid &= np.outer(window.context_mask[lo:hi], window.context_mask[lo:hi])
    scores = np.where(valid, outer, -1.0).ravel()
    k = min(top_k, int(valid.sum()))
    if k == 0:
        return [], null_score
    if k == 1:
        order = np.array([int(np.argmax(scores))])
    else:
        part = np.argpartition(-scores, k - 1)[:k]
        order = part[np.lexsort((part, -scores[part]))]
    width = hi - lo
    return [(lo + int(i) // width, lo + int(i) % width, float(scores[i])) for i in order], null_score


def token_span_to_chars(enc: Encoding, start: int, end: int, align_to_words: bool = True) -> tuple[int, int]:
    """Character offsets into the context of the tokens ``start..end`` (inclusive).

    With ``align_to_words`` the span is widened to the words holding its first and last token (the
    `transformers` default); tokens without a word fall back to their own offsets.
    """
    if align_to_words:
        start_word, end_word = enc.token_to_word(start), enc.token_to_word(end)
        if start_word is not None and end_word is not None:
            first = enc.word_to_chars(start_word, 1)
            last = enc.word_to_chars(end_word, 1)
            if first is not None and last is not None:
                return first[0], last[1]
    return enc.offsets[start][0], enc.offsets[end][1]


def answers_for_example(windows: Sequence[Window], logits: Sequence[tuple[np.ndarray, np.ndarray]],
                        context: str, top_k: int, max_answer_length: int, handle_impossible_answer: bool,
                        align_to_words: bool = True) -> list[dict[str, Any]]:
    """The ``top_k`` answers ``{"answer", "score", "start", "end"}`` of one question, best first.

    ``windows`` are that question's windows and ``logits`` their ``(start, end)`` logits, trimmed to
    each window's length.
    """
    found: dict[tuple[int, int], float] = {}
    null = 1_000_000.0  # as in `transformers`: the minimum over windows, "large and positive" to start
    for window, (start_logits, end_logits) in zip(windows, logits, strict=True):
        spans, null_score = window_spans(start_logits, end_logits, window, top_k, max_answer_length)
        null = min(null, null_score)
        for s, e, score in spans:
            key = token_span_to_chars(window.encoding, s, e, align_to_words)
            if score > found.get(key, -1.0):
                found[key] = score
    answers = [{"answer": context[s:e], "score": score, "start": s, "end": e}
               for (s, e), score in found.items()]
    if handle_impossible_answer or not answers:
        answers.append({"answer": "", "score": null if windows else 0.0, "start": 0, "end": 0})
    answers.sort(key=lambda a: a["score"], reverse=True)  # stable: earlier windows win ties
    return answers[:top_k]


# ---------------------------------------------------------------------------------------- schemas


class QuestionAnsweringInput(BaseModel):
    """Request: one question and context, or lists of them (one context may serve many questions)."""

    question: str | list[str] = Field(description="question(s)")
    context: str | list[str] = Field(description="context(s); one string is shared by every question")
    top_k: int | None = Field(None, ge=1, description="answers per question, best first (default 1)")
    doc_stride: int | None = Field(None, ge=0, description="tokens of overlap between context windows")
    max_answer_length: int | None = Field(None, ge=1, description="longest answer, in tokens")
    max_question_length: int | None = Field(None, ge=1, description="questions are cut to this many tokens")
    handle_impossible_answer: bool | None = Field(None, description="allow the empty 'no answer' result")


class Answer(BaseModel):
    """One answer: its text, probability and character offsets into the context."""

    answer: str
    score: float
    start: int
    end: int


class QuestionAnsweringOutput(RootModel[Answer | list[Answer] | list[list[Answer]]]):
    """Response, shaped like transformers: an answer (one question, top_k 1), a list of answers (several
    questions, or top_k > 1 for one question), or a list of lists (several questions, top_k > 1)."""


# ---------------------------------------------------------------------------------------- pipeline


class QuestionAnsweringPipeline(Pipeline):
    """Extractive QA: ``pipe(question="Who?", context="...")`` -> ``{"answer", "score", "start", "end"}``.

    Options (at creation or per call): ``doc_stride`` (default ``min(max_length // 2, 128)``),
    ``max_answer_length`` (15), ``max_question_length`` (64), ``top_k`` / ``n_best_size`` (1),
    ``handle_impossible_answer`` (False), ``align_to_words`` (True). The largest sequence bucket is the
    window length: longer contexts are split into windows overlapping by ``doc_stride`` tokens.
    """

    task = "question_answering"
    checkpoint_head = "question_answering"
    input_schema = QuestionAnsweringInput
    output_schema = QuestionAnsweringOutput

    _ALIASES: ClassVar[dict[str, str]] = {
        "n_best_size": "top_k", "topk": "top_k", "max_answer_len": "max_answer_length",
        "max_question_len": "max_question_length",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._window_tokenizers: dict[int, Tokenizer] = {}
        self._lock = threading.Lock()
        super().__init__(*args, **kwargs)
        outputs = list(self.engine.output_names)
        if {"start_logits", "end_logits"} <= set(outputs):
            self._outputs = ("start_logits", "end_logits")
        elif len(outputs) == 2:
            self._outputs = (outputs[0], outputs[1])
        else:
            raise ModelLoadError(f"a question-answering model needs start_logits and end_logits outputs, "
                                 f"this one has {outputs}")
        self.cls_token_id = self._special_id(self.config.get("cls_token_id"), ("[CLS]", "<s>", "<cls>"))

    def _special_id(self, configured: Any, tokens: Sequence[str]) -> int | None:
        if configured is not None:
            return int(configured)
        for token in tokens:
            tid = self.tokenizer.token_to_id(token)
            if tid is not None:
                return int(tid)
        return None

    # ---- options ------------------------------------------------------------------------------
    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        options: dict[str, Any] = {}
        for name, value in kwargs.items():
            canonical = self._ALIASES.get(name, name)
            if canonical in options and value is not None:
                raise InvalidInputError(f"{name} given twice (also as {canonical})")
            if value is not None:
                options[canonical] = value
        pre: dict[str, Any] = {}
        post: dict[str, Any] = {}
        for name, value in options.items():
            if name in ("doc_stride", "max_question_length", "top_k", "max_answer_length"):
                if isinstance(value, bool) or not isinstance(value, int | np.integer):
                    raise InvalidInputError(f"{name} must be an int, got {value!r}")
                minimum = 0 if name == "doc_stride" else 1
                if value < minimum:
                    raise InvalidInputError(f"{name} must be >= {minimum}, got {value}")
                (pre if name in ("doc_stride", "max_question_length") else post)[name] = int(value)
            elif name in ("handle_impossible_answer", "align_to_words"):
                if not isinstance(value, bool | np.bool_):
                    raise InvalidInputError(f"{name} must be a bool, got {value!r}")
                post[name] = bool(value)
            else:
                raise TypeError(f"unexpected option {name!r}")
        return pre, {}, post

    # ---- tokeniser ----------------------------------------------------------------------------
    def configure_tokenizer(self) -> None:
        """The shared tokenizer neither truncates nor pads; windows use per-stride copies."""
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def default_doc_stride(self) -> int:
        """``min(max_length // 2, 128)``, as in `transformers`."""
        return min(self.max_length // 2, 128)

    def window_tokenizer(self, doc_stride: int) -> Tokenizer:
        """A copy of the tokenizer that truncates the context to the largest bucket with this stride."""
        limit = self.max_length - self.tokenizer.num_special_tokens_to_add(True)
        if doc_stride >= limit:
            raise InvalidInputError(f"doc_stride={doc_stride} must be smaller than {limit} (the window "
                                    f"length {self.max_length} less the special tokens)")
        with self._lock:
            tok = self._window_tokenizers.get(doc_stride)
            if tok is None:
                if len(self._window_tokenizers) >= 8:  # bound the cache of per-stride copies
                    self._window_tokenizers.pop(next(iter(self._window_tokenizers)))
                tok = Tokenizer.from_str(self.tokenizer.to_str())
                tok.no_padding()
                tok.enable_truncation(self.max_length, stride=doc_stride, strategy="only_second")
                self._window_tokenizers[doc_stride] = tok
            return tok

    # ---- running ------------------------------------------------------------------------------
    def _parse_inputs(self, inputs: Any, kwargs: dict[str, Any]) -> tuple[list[Any], bool, dict[str, Any]]:
        question = kwargs.pop("question", None)
        context = kwargs.pop("context", None)
        if inputs is not None:
            if question is not None or context is not None:
                raise InvalidInputError("give either an input dict or question=/context=, not both")
            single = isinstance(inputs, Mapping)
            items = [inputs] if single else inputs
            if isinstance(items, str) or not isinstance(items, Sequence):
                raise InvalidInputError("inputs must be {'question': ..., 'context': ...} or a list of them")
            pairs = []
            for item in items:
                if not isinstance(item, Mapping) or set(item) != {"question", "context"}:
                    raise InvalidInputError(f"each input must be a dict with exactly the keys question and "
                                            f"context, got {item!r}")
                pairs.append((item["question"], item["context"]))
        else:
            if question is None or context is None:
                raise InvalidInputError("question answering needs both question= and context=")
            single = isinstance(question, str) and isinstance(context, str)
            questions = [question] if isinstance(question, str) else question
            contexts = context
            if isinstance(context, str):
                contexts = [context] * (len(questions) if isinstance(questions, Sequence) else 1)
            if not isinstance(questions, Sequence) or not isinstance(contexts, Sequence):
                raise InvalidInputError("question and context must be strings or lists of strings")
            if isinstance(question, str) and not isinstance(context, str):
                questions = [question] * len(contexts)
            if len(questions) != len(contexts):
                raise InvalidInputError(f"got {len(questions)} questions but {len(contexts)} contexts: give "
                                        "one context per question, or one context for all")
            pairs = list(zip(questions, contexts, strict=True))
        for i, (q, c) in enumerate(pairs):
            for name, value in (("question", q), ("context", c)):
                if not isinstance(value, str):
                    raise InvalidInputError(f"{name} {i} must be a string, got {type(value).__name__}")
                if not value.strip():
                    raise InvalidInputError(f"{name} {i} is empty")
        return pairs, single, kwargs

    def preprocess(self, items: list[tuple[str, str]], doc_stride: int | None = None,
                   max_question_length: int = 64) -> list[Encoded]:
        """Split every (question, context) into windows; one engine row per window."""
        stride = self.default_doc_stride() if doc_stride is None else doc_stride
        questions = [q for q, _ in items]
        contexts = [c for _, c in items]
        windows = make_windows(self.window_tokenizer(stride), self.tokenizer, questions, contexts,
                               self.max_length, stride, max_question_length, self.cls_token_id)
        encoded = [Encoded([], {"windows": [], "context": c}) for c in contexts]
        for window in windows:
            item = encoded[window.example]
            item.rows.append(self.rows_from_encoding(window.encoding))
            item.meta["windows"].append(window)
        return encoded

    def forward(self, encoded: list[Encoded], **kwargs: Any) -> list[list[dict[str, np.ndarray]]]:
        """Run every window in batches of the engine's batch size, each batch in the smallest bucket
        that holds it (windows are grouped by bucket, then chunked)."""
        flat = [(i, j, row) for i, enc in enumerate(encoded) for j, row in enumerate(enc.rows)]
        lengths = [len(row["input_ids"]) for _, _, row in flat]
        results: list[list[dict[str, np.ndarray]]] = [[{} for _ in enc.rows] for enc in encoded]
        chunks = self.chunk_rows(lengths, by_bucket=True)
        for chunk in chunks:
            out = self.run_batch([flat[k][2] for k in chunk])
            for b, k in enumerate(chunk):
                i, j, _ = flat[k]
                results[i][j] = {name: out[name][b, :lengths[k]] for name in self._outputs}
        return results

    def postprocess(self, encoded: Encoded, outputs: list[dict[str, np.ndarray]], top_k: int = 1,
                    max_answer_length: int = 15, handle_impossible_answer: bool = False,
                    align_to_words: bool = True) -> dict[str, Any] | list[dict[str, Any]]:
        """Best answer (a dict) when ``top_k`` is 1, else a list of up to ``top_k`` answers."""
        start_name, end_name = self._outputs
        logits = [(np.asarray(o[start_name]).reshape(-1), np.asarray(o[end_name]).reshape(-1))
                  for o in outputs]
        answers = answers_for_example(encoded.meta["windows"], logits, encoded.meta["context"], top_k,
                                      max_answer_length, handle_impossible_answer, align_to_words)
        return answers[0] if top_k == 1 else answers
