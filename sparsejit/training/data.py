"""Training data for the three tasks, read from their usual files and tokenised into features.

- text classification: CSV with a header holding ``text`` and ``label`` (any order; ``text_pair`` too);
- token classification: CoNLL, ``token<TAB>tag`` per line, sentences separated by blank (or tab-only) lines;
- question answering: SQuAD v1.1 / v2.0 JSON (``is_impossible`` questions target the [CLS] token).

Features are numpy (no torch here): each holds token ids and its targets, padded later per batch.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsejit.errors import TrainingDataError

__all__ = ["Example", "Feature", "read_examples", "split_examples", "label_list", "build_features"]

IGNORE = -100  # target of sub-word pieces and special tokens in token classification


@dataclass
class Example:
    """One training or evaluation example of any task."""

    text: Any  # str (classification), list[str] words (tokens), question str (QA)
    label: Any = None  # str label, list[str] tags, or list of answer dicts (QA)
    context: str = ""  # QA context / classification text pair
    id: str = ""
    group: str = ""  # QA article title (for held-out splits by article)


@dataclass
class Feature:
    """Tokenised model input with its targets; `example` indexes the example it came from."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    example: int
    label: int = IGNORE
    labels: np.ndarray | None = None  # token classification
    start: int = 0  # QA
    end: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def read_examples(path: str | os.PathLike, task: str) -> list[Example]:
    """Examples of `task` from `path` (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"no such file: {path}")
    if task == "text_classification":
        return _read_csv(path)
    if task == "token_classification":
        return _read_conll(path)
    if task == "question_answering":
        return _read_squad(path)
    raise TrainingDataError(f"no training data reader for task {task!r}")


def _read_csv(path: Path) -> list[Example]:
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "text" not in fields or "label" not in fields:
            raise TrainingDataError(f"{path}: a classification CSV needs a header with 'text' and 'label' columns, "
                                    f"got {reader.fieldnames}")
        names = dict(zip(fields, reader.fieldnames or [], strict=True))
        out = []
        for i, row in enumerate(reader, start=2):
            text, label = row.get(names["text"]), row.get(names["label"])
            if not text or label is None or not label.strip():
                raise TrainingDataError(f"{path}:{i}: empty text or label")
            pair = row.get(names["text_pair"], "") if "text_pair" in names else ""
            out.append(Example(text=text, label=label.strip(), context=pair or "", id=str(i)))
    if not out:
        raise TrainingDataError(f"{path}: no rows")
    return out


def _read_conll(path: Path) -> list[Example]:
    out: list[Example] = []
    words: list[str] = []
    tags: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, start=1):
            parts = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            parts = [p.strip() for p in parts]
            if not any(parts):
                if words:
                    out.append(Example(text=words, label=tags, id=str(len(out))))
                words, tags = [], []
                continue
            if len(parts) < 2 or not parts[0] or not parts[-1]:
                raise TrainingDataError(f"{path}:{n}: expected 'token<TAB>tag', got {line.rstrip()!r}")
            words.append(parts[0])
            tags.append(parts[-1])
    if words:
        out.append(Example(text=words, label=tags, id=str(len(out))))
    if not out:
        raise TrainingDataError(f"{path}: no sentences")
    return out


def _read_squad(path: Path) -> list[Example]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainingDataError(f"{path}: not SQuAD JSON ({exc})") from None
    out = []
    for article in data:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = [] if qa.get("is_impossible") else list(qa.get("answers", []))
                out.append(Example(text=qa["question"], label=answers, context=para["context"], id=qa["id"],
                                   group=article.get("title", "")))
    return out


def split_examples(examples: Sequence[Example], fraction: float, seed: int,
                   holdout_group: str | None = None) -> tuple[list[Example], list[Example]]:
    """(train, held out): a seeded random `fraction`, or every example of `holdout_group` (a QA article)."""
    if holdout_group is not None:
        held = [e for e in examples if e.group == holdout_group]
        if not held:
            raise TrainingDataError(f"no examples of group {holdout_group!r}")
        return [e for e in examples if e.group != holdout_group], held
    order = np.random.default_rng(seed).permutation(len(examples))
    n_held = int(round(fraction * len(examples)))
    held = set(order[:n_held].tolist())
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def label_list(examples: Sequence[Example], task: str) -> list[str]:
    """The labels the data uses (tags flattened for NER), 'O' first, else sorted."""
    if task == "question_answering":
        return []
    seen = {t for e in examples for t in (e.label if task == "token_classification" else [e.label])}
    return sorted(seen, key=lambda s: (s != "O", s))


def build_features(examples: Sequence[Example], task: str, tokenizer: Any, label2id: Mapping[str, int],
                   max_length: int, doc_stride: int = 128) -> list[Feature]:
    """Tokenise examples (a `tokenizers.Tokenizer`, padding off) into features with their targets."""
    tokenizer.no_padding()
    if task == "text_classification":
        return _classification_features(examples, tokenizer, label2id, max_length)
    if task == "token_classification":
        return _token_features(examples, tokenizer, label2id, max_length)
    return _qa_features(examples, tokenizer, max_length, doc_stride)


def _label_id(label: str, label2id: Mapping[str, int], where: str) -> int:
    if label in label2id:
        return label2id[label]
    folded = {k.lower(): v for k, v in label2id.items()}
    if label.lower() in folded:
        return folded[label.lower()]
    if label.isdigit() and int(label) in label2id.values():
        return int(label)
    raise TrainingDataError(f"{where}: label {label!r} is not one of the model's labels {sorted(label2id)}")


def _classification_features(examples: Sequence[Example], tokenizer: Any, label2id: Mapping[str, int],
                             max_length: int) -> list[Feature]:
    tokenizer.enable_truncation(max_length)
    texts = [(e.text, e.context) if e.context else e.text for e in examples]
    out = []
    for i, (ex, enc) in enumerate(zip(examples, tokenizer.encode_batch(texts), strict=True)):
        out.append(Feature(np.asarray(enc.ids, np.int64), np.asarray(enc.type_ids, np.int64), i,
                           label=_label_id(ex.label, label2id, f"row {ex.id}")))
    return out


def _token_features(examples: Sequence[Example], tokenizer: Any, label2id: Mapping[str, int],
                    max_length: int) -> list[Feature]:
    tokenizer.enable_truncation(max_length)
    encs = tokenizer.encode_batch([list(e.text) for e in examples], is_pretokenized=True)
    out = []
    for i, (ex, enc) in enumerate(zip(examples, encs, strict=True)):
        labels = np.full(len(enc.ids), IGNORE, np.int64)
        previous = None
        for t, word in enumerate(enc.word_ids):
            if word is not None and word != previous:  # the first piece of each word carries its tag
                labels[t] = _label_id(ex.label[word], label2id, f"sentence {ex.id}")
            previous = word
        out.append(Feature(np.asarray(enc.ids, np.int64), np.asarray(enc.type_ids, np.int64), i, labels=labels))
    return out


def _qa_features(examples: Sequence[Example], tokenizer: Any, max_length: int, doc_stride: int) -> list[Feature]:
    """One feature per context window overlapping by `doc_stride` tokens (at most half the room the question
    leaves); start/end 0 ([CLS]) when the answer is not wholly inside the window."""
    out = []
    for i, ex in enumerate(examples):
        question = len(tokenizer.encode(ex.text, add_special_tokens=False).ids)
        room = max_length - question - tokenizer.num_special_tokens_to_add(True)
        if room < 2:
            raise TrainingDataError(f"question {ex.id!r} takes {question} tokens: no room for its context in "
                                    f"{max_length} (raise max_length)")
        tokenizer.enable_truncation(max_length, stride=min(doc_stride, room // 2), strategy="only_second")
        enc = tokenizer.encode(ex.text, ex.context)
        answer = ex.label[0] if ex.label else None
        for window in [enc, *enc.overflowing]:
            start = end = 0
            if answer is not None:
                a0 = int(answer["answer_start"])
                a1 = a0 + len(answer["text"])
                seq = window.sequence_ids
                ctx = [t for t, s in enumerate(seq) if s == 1]
                if ctx and window.offsets[ctx[0]][0] <= a0 and window.offsets[ctx[-1]][1] >= a1:
                    start = next(t for t in ctx if window.offsets[t][1] > a0)
                    end = next(t for t in reversed(ctx) if window.offsets[t][0] < a1)
            out.append(Feature(np.asarray(window.ids, np.int64), np.asarray(window.type_ids, np.int64), i,
                               start=start, end=end))
    return out
