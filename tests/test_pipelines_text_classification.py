"""Text classification pipeline vs transformers' pipeline("text-classification") on the same weights.

Model: ../shared/models/minilm-sentiment (BertForSequenceClassification). Ours runs its ONNX export
compiled by sparsejit; the reference is the transformers pipeline on the PyTorch checkpoint.
Same labels; scores within 1e-4 (measured max difference ~1e-6). Accuracy on all 1,000 tweets of
eval.csv at max_length 64 equals the reference pipeline's (84.2 %).
"""

from __future__ import annotations

import csv

import pytest
import zoo

from sparsejit import Pipeline
from sparsejit.errors import InvalidInputError

SCORE_TOL = 1e-4
TEXTS = [
    "@AmericanAir thanks for the upgrade, best flight ever!",
    "@united lost my bag AGAIN. Worst airline. #fail",
    "ok",
    "The flight was fine I guess, nothing special but the crew were friendly and the snacks were good. "
    "Landed on time. " * 3,  # longer than 64 tokens: truncated like the reference
]


@pytest.fixture(scope="module")
def src():
    return zoo.shared_dir("minilm-sentiment")


@pytest.fixture(scope="module")
def ours(src) -> Pipeline:
    return Pipeline.create("sentiment-analysis", zoo.shared_model("minilm-sentiment"), batch_size=16,
                           sequence_length=[32, 64])


@pytest.fixture(scope="module")
def reference(src):
    transformers = pytest.importorskip("transformers")
    pipe = transformers.pipeline("text-classification", model=str(src), device="cpu")
    pipe.tokenizer.model_max_length = 64  # = our largest bucket
    return pipe


def same(got, want) -> None:
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (got, want)
        for g, w in zip(got, want, strict=True):
            same(g, w)
        return
    assert got["label"] == want["label"], (got, want)
    assert abs(got["score"] - want["score"]) <= SCORE_TOL, (got, want)


def test_parity_shapes_and_options(ours: Pipeline, reference) -> None:
    same(ours(TEXTS[0]), reference(TEXTS[0]))  # [ {label, score} ]
    same(ours(TEXTS), reference(TEXTS, truncation=True))
    same(ours(TEXTS[1], top_k=None), reference(TEXTS[1], top_k=None))
    same(ours(TEXTS, top_k=1), reference(TEXTS, top_k=1, truncation=True))
    same(ours(TEXTS[:2], top_k=2), reference(TEXTS[:2], top_k=2))
    same(ours(TEXTS[0], function_to_apply="sigmoid"), reference(TEXTS[0], function_to_apply="sigmoid"))
    same(ours(TEXTS[0], function_to_apply="none"), reference(TEXTS[0], function_to_apply="none"))
    pair = {"text": TEXTS[0], "text_pair": TEXTS[1]}
    same(ours(pair), reference(pair))
    same(ours([pair, pair], top_k=None), reference([pair, pair], top_k=None))


def test_eval_accuracy_matches_reference(ours: Pipeline, reference, src) -> None:
    with open(src / "eval.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    texts, gold = [r["text"] for r in rows], [r["label"] for r in rows]
    got = ours(texts)
    want = reference(texts, batch_size=32, truncation=True, max_length=64)
    ours_acc = sum(g["label"] == y for g, y in zip(got, gold, strict=True)) / len(gold)
    ref_acc = sum(w["label"] == y for w, y in zip(want, gold, strict=True)) / len(gold)
    print(f"eval.csv accuracy: sparsejit {ours_acc:.3f}, transformers {ref_acc:.3f} ({len(gold)} tweets)")
    assert ours_acc == ref_acc
    assert abs(ours_acc - 0.842) < 1e-9  # the figure in ../shared/README.md
    same(got, want)  # every label equal, every score within tolerance


def test_schema_run(ours: Pipeline) -> None:
    out = ours.run({"inputs": [TEXTS[0], {"text": "a", "text_pair": "b"}], "top_k": None})
    assert [len(r) for r in out.root] == [2, 2]
    assert {r.label for r in out.root[0]} == {"NEGATIVE", "POSITIVE"}
    assert ours.run(ours.input_schema(inputs="fine")).root[0].label in {"NEGATIVE", "POSITIVE"}


def test_errors(ours: Pipeline) -> None:
    with pytest.raises(InvalidInputError):
        ours(TEXTS[0], top_k=0)
    with pytest.raises(InvalidInputError):
        ours(TEXTS[0], function_to_apply="relu")
    with pytest.raises(InvalidInputError):
        ours([1, 2])
    with pytest.raises(InvalidInputError):
        ours(TEXTS[0], max_length=3)
    assert ours([]) == []
