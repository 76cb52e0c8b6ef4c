"""Question-answering pipeline on the real fine-tuned model ``../shared/models/minilm-squad``.

* parity with ``reference-predictions.json`` (spans of the transformers 4.x QA pipeline logic on the
  PyTorch checkpoint: max_seq_len 384, doc_stride 128, max_answer_len 15, words aligned), and each
  answer's score against an independent PyTorch + transformers-tokenizer computation;
* EM / F1 with the official SQuAD normalisation on ``eval-answerable.json``: 38.3 / 49.0;
* long contexts cut into several 128-token windows (doc_stride 32) whose answer lies in a late window:
  the windowed answer must equal the known gold span at its known character offset and the answer of a
  run that holds the whole context in one 384-token window; and questions over the whole held-out
  article (~3,750 tokens, ~45 windows) must hit their unique gold span;
* bad inputs raise typed errors.

The reference holds only answer texts (no offsets, no scores): offsets are checked as
``context[start:end] == answer`` here and against known gold offsets in the long-context cases; scores
against PyTorch.

All 324 questions of eval.json run in one batched call (the 180 answerable ones give EM/F1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zoo

import sparsejit
from sparsejit.errors import InvalidInputError
from sparsejit.tasks.question_answering import QuestionAnsweringOutput, QuestionAnsweringPipeline
from sparsejit.tasks.squad_metrics import evaluate, iter_questions

SQUAD = zoo.SHARED_DIR / "models" / "minilm-squad"
SCORE_ATOL = 1e-4  # |pipeline score - PyTorch score|; measured max 4e-6
BUCKETS = [96, 128, 192, 256, 384]  # 384 = the reference's max_seq_len, so windows match it


def _load(name: str) -> Any:
    return json.loads((SQUAD / name).read_text())


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return zoo.shared_model("minilm-squad")  # skips (or fails under CI) without ../shared


@pytest.fixture(scope="module")
def pipe(model_dir: Path) -> QuestionAnsweringPipeline:
    return sparsejit.Pipeline.create("question-answering", model_dir, batch_size=4,
                                     sequence_length=BUCKETS, num_threads=2)


@pytest.fixture(scope="module")
def pipe128(model_dir: Path) -> QuestionAnsweringPipeline:
    return sparsejit.Pipeline.create("qa", model_dir, batch_size=4, sequence_length=128, num_threads=2)


@pytest.fixture(scope="module")
def eval_run(pipe: QuestionAnsweringPipeline) -> dict[str, tuple[str, str, dict]]:
    """{id: (question, context, pipeline answer)} for the questions under test, in one batched call."""
    items = list(iter_questions(_load("eval.json")))
    results = pipe(question=[q for _, q, _, _ in items], context=[c for _, _, c, _ in items])
    return {qid: (q, c, r) for (qid, q, c, _), r in zip(items, results, strict=True)}


# ------------------------------------------------------------------------------------ reference parity


def test_parity_with_reference_predictions(eval_run: dict[str, tuple[str, str, dict]]) -> None:
    reference = _load("reference-predictions.json")
    assert reference["settings"] == {"max_seq_len": 384, "doc_stride": 128, "max_answer_len": 15,
                                     "handle_impossible_answer": False}
    predictions = reference["predictions"]
    assert len(eval_run) == 324
    mismatched = {qid: (r["answer"], predictions[qid]) for qid, (_, _, r) in eval_run.items()
                  if r["answer"] != predictions[qid]}
    assert not mismatched, f"{len(mismatched)} answers differ from the reference: {mismatched}"
    for _qid, (_, context, r) in eval_run.items():
        assert context[r["start"]:r["end"]] == r["answer"]
        assert 0 < r["score"] <= 1


def test_scores_match_pytorch(eval_run: dict[str, tuple[str, str, dict]]) -> None:
    """Score = max over spans (start <= end < start + 15, both in the context) of p_start * p_end, the
    softmax taken over the context tokens and [CLS]; computed here with PyTorch and the transformers
    tokenizer on a sample of questions (every context of eval.json fits one 384-token window)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(SQUAD))
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(SQUAD)).eval()
    sample = sorted(eval_run)[::6]
    diffs = []
    for qid in sample:
        question, context, result = eval_run[qid]
        enc = tokenizer(question, context, truncation="only_second", max_length=384, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc)
        allowed = np.array([s == 1 for s in enc.sequence_ids(0)])
        allowed[0] = True  # [CLS] takes part in the softmax, never in a span
        p = [np.exp(x - x[allowed].max()) * allowed for x in
             (out.start_logits[0].double().numpy(), out.end_logits[0].double().numpy())]
        p_start, p_end = (x / x.sum() for x in p)
        p_start[0] = p_end[0] = 0.0
        span = np.triu(np.outer(p_start, p_end)) - np.triu(np.outer(p_start, p_end), 15)
        diffs.append(abs(result["score"] - span.max()))
    assert max(diffs) < SCORE_ATOL, f"max score difference {max(diffs):.2e} over {len(sample)} questions"


def test_exact_match_and_f1_equal_reference(eval_run: dict[str, tuple[str, str, dict]]) -> None:
    data = _load("eval-answerable.json")
    predictions = {qid: r["answer"] for qid, (_, _, r) in eval_run.items()}
    assert {qid for qid, *_ in iter_questions(data)} <= set(predictions)
    result = evaluate(data, predictions)
    assert result["total"] == 180
    assert round(result["exact_match"], 1) == 38.3
    assert round(result["f1"], 1) == 49.0


# ------------------------------------------------------------------------------------ long contexts

# (question id, eval-answerable.json paragraphs placed before the question's own paragraph). Gold
# answers are unambiguous and absent from the filler paragraphs; each context is ~300-400 tokens.
LONG_CASES = [
    ("5705fec152bb89140068977a", [12, 16, 17]),  # '10,000'
    ("5705fec152bb89140068977e", [12, 16, 17]),  # '$20 billion'
    ("5705ffde52bb891400689787", [12, 17, 18]),  # 'USGS'
    ("5706155352bb891400689894", [33, 35, 36, 37]),  # 'Rugby'
]


def _long_cases() -> list[dict[str, Any]]:
    paragraphs = _load("eval-answerable.json")["data"][0]["paragraphs"]
    cases = []
    for qid, filler in LONG_CASES:
        own = next(p for p in paragraphs if any(q["id"] == qid for q in p["qas"]))
        qa = next(q for q in own["qas"] if q["id"] == qid)
        gold = qa["answers"][0]
        context = "\n\n".join([paragraphs[i]["context"] for i in filler] + [own["context"]])
        start = len(context) - len(own["context"]) + gold["answer_start"]
        assert context[start:start + len(gold["text"])] == gold["text"]
        assert all(gold["text"] not in paragraphs[i]["context"] for i in filler)
        cases.append({"question": qa["question"], "context": context, "answer": gold["text"],
                      "start": start, "end": start + len(gold["text"])})
    return cases


def test_long_context_windows_find_answer_in_late_window(pipe: QuestionAnsweringPipeline,
                                                         pipe128: QuestionAnsweringPipeline) -> None:
    cases = _long_cases()
    questions = [c["question"] for c in cases]
    contexts = [c["context"] for c in cases]
    windowed = pipe128(question=questions, context=contexts, doc_stride=32)
    full = pipe(question=questions, context=contexts)
    encoded128 = pipe128.preprocess(list(zip(questions, contexts, strict=True)), doc_stride=32)
    encoded384 = pipe.preprocess(list(zip(questions, contexts, strict=True)))
    for case, w, f, e128, e384 in zip(cases, windowed, full, encoded128, encoded384, strict=True):
        assert len(e384.rows) == 1, "the full-length run must hold the whole context in one window"
        windows = e128.meta["windows"]
        assert len(windows) >= 3
        first_window_end = max(end for (_, end), s in zip(windows[0].encoding.offsets,
                                                          windows[0].encoding.sequence_ids, strict=True)
                               if s == 1)
        assert case["start"] > first_window_end, "the answer must lie beyond the first window"
        expected = {"answer": case["answer"], "start": case["start"], "end": case["end"]}
        assert {k: f[k] for k in expected} == expected
        assert {k: w[k] for k in expected} == expected
        assert 0 < w["score"] <= 1


# Questions answered over the whole held-out article (~3,750 tokens: ~45 windows of 128 tokens at
# doc_stride 32); each gold answer occurs exactly once in the article, at a known offset.
ARTICLE_CASES = ["5705edcd52bb8914006896cd", "5705fec152bb89140068977a", "5706155352bb891400689894"]


def test_whole_article_context(pipe128: QuestionAnsweringPipeline) -> None:
    paragraphs = _load("eval-answerable.json")["data"][0]["paragraphs"]
    article = "\n\n".join(p["context"] for p in paragraphs)
    questions, expected = [], []
    for qid in ARTICLE_CASES:
        own = next(p for p in paragraphs if any(q["id"] == qid for q in p["qas"]))
        qa = next(q for q in own["qas"] if q["id"] == qid)
        gold = qa["answers"][0]
        assert article.count(gold["text"]) == 1
        start = article.index(own["context"]) + gold["answer_start"]
        questions.append(qa["question"])
        expected.append({"answer": gold["text"], "start": start, "end": start + len(gold["text"])})
    (encoded,) = pipe128.preprocess([(questions[0], article)], doc_stride=32)
    assert len(encoded.rows) > 30
    results = pipe128(question=questions, context=article, doc_stride=32)
    for result, want in zip(results, expected, strict=True):
        assert {k: result[k] for k in want} == want


def test_windows_overlap_by_doc_stride_and_cover_the_context(pipe128: QuestionAnsweringPipeline) -> None:
    case = _long_cases()[0]
    plain = pipe128.tokenizer.encode(case["context"], add_special_tokens=False)
    for stride in (0, 32, 64):
        (encoded,) = pipe128.preprocess([(case["question"], case["context"])], doc_stride=stride)
        windows = [w.encoding for w in encoded.meta["windows"]]
        spans = []
        for enc in windows:
            assert len(enc.ids) <= 128
            ctx = [o for o, s in zip(enc.offsets, enc.sequence_ids, strict=True) if s == 1]
            first = plain.offsets.index(ctx[0])
            assert plain.offsets[first:first + len(ctx)] == ctx
            spans.append((first, first + len(ctx)))
        assert spans[0][0] == 0 and spans[-1][1] == len(plain.ids)
        for (_, prev_end), (start, _) in zip(spans, spans[1:], strict=False):
            assert prev_end - start == stride


# ------------------------------------------------------------------------------------ options, inputs


def test_input_forms_and_schema(pipe128: QuestionAnsweringPipeline) -> None:
    case = _long_cases()[3]
    q, c = case["question"], case["context"]
    single = pipe128(question=q, context=c)
    assert set(single) == {"answer", "score", "start", "end"}
    assert pipe128({"question": q, "context": c}) == single
    short_q = "What is Southern California often abbreviated as?"
    short_c = "Southern California, often abbreviated SoCal, is a geographic and cultural region."
    both = pipe128([{"question": short_q, "context": short_c}, {"question": q, "context": c}])
    assert both[1] == single and both[0]["answer"] == "SoCal"
    shared = pipe128(question=[q, q], context=c)
    assert shared == [single, single]
    response = pipe128.run({"question": q, "context": c})
    assert isinstance(response, QuestionAnsweringOutput)
    assert response.model_dump() == single


def test_top_k_and_impossible_answer(pipe128: QuestionAnsweringPipeline) -> None:
    case = _long_cases()[2]
    q, c = case["question"], case["context"]
    best = pipe128(question=q, context=c, doc_stride=32)
    top = pipe128(question=q, context=c, doc_stride=32, top_k=5)
    assert len(top) == 5 and top[0] == best
    assert [a["score"] for a in top] == sorted((a["score"] for a in top), reverse=True)
    assert len({(a["start"], a["end"]) for a in top}) == 5
    assert all(c[a["start"]:a["end"]] == a["answer"] for a in top)
    assert pipe128(question=q, context=c, doc_stride=32, n_best_size=5) == top
    with_null = pipe128(question=q, context=c, doc_stride=32, top_k=10**6, handle_impossible_answer=True)
    null = [a for a in with_null if a["answer"] == ""]
    assert len(null) == 1 and null[0]["start"] == null[0]["end"] == 0 and 0 <= null[0]["score"] <= 1
    short = pipe128(question=q, context=c, doc_stride=32, max_answer_length=1, top_k=3)
    assert all(" " not in a["answer"] for a in short)


def test_bad_options_fail_before_compiling(model_dir: Path) -> None:
    for bad in ({"top_k": 0}, {"max_answer_length": 0}, {"doc_stride": -1}, {"max_question_length": "64"},
                {"handle_impossible_answer": "yes"}, {"no_such_option": 1}, {"top_k": 2, "n_best_size": 3}):
        with pytest.raises(InvalidInputError):
            sparsejit.Pipeline.create("qa", model_dir, sequence_length=128, **bad)


def test_bad_inputs_raise_typed_errors(pipe128: QuestionAnsweringPipeline) -> None:
    c = "Southern California, often abbreviated SoCal, is a geographic and cultural region."
    long_c = _long_cases()[0]["context"]
    bad_calls = [
        lambda: pipe128(question="", context=c),
        lambda: pipe128(question="Who?", context="   "),
        lambda: pipe128(question="Who?"),
        lambda: pipe128(question=["a?", "b?"], context=[c, c, c]),
        lambda: pipe128(question=3, context=c),
        lambda: pipe128({"question": "Who?"}),
        lambda: pipe128([{"question": "Who?", "context": c, "extra": 1}]),
        lambda: pipe128({"question": "Who?", "context": c}, question="Who?"),
        lambda: pipe128(question="Who?", context=c, top_k=0),
        lambda: pipe128(question="Who?", context=long_c, doc_stride=127),  # stride >= window - specials
        lambda: pipe128(question="Who was the senator?", context=long_c, doc_stride=121),  # >= context room
        lambda: pipe128(question="why " * 200, context=long_c, max_question_length=200),  # no room left
    ]
    for call in bad_calls:
        with pytest.raises(InvalidInputError):
            call()
    # a long question is cut to max_question_length tokens instead
    assert pipe128(question="why " * 200, context=c)["answer"]



def _record_batches(pipeline: QuestionAnsweringPipeline, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Make ``pipeline`` log the row lengths of every engine batch it runs."""
    calls: list[list[int]] = []
    run_batch = pipeline.run_batch

    def recording(rows: Any) -> dict[str, np.ndarray]:
        calls.append([len(r["input_ids"]) for r in rows])
        return run_batch(rows)

    monkeypatch.setattr(pipeline, "run_batch", recording)
    return calls


def test_windows_batched_per_bucket(pipe: QuestionAnsweringPipeline, pipe128: QuestionAnsweringPipeline,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of all questions share batches of at most batch_size rows, a batch never mixes buckets,
    and the results do not depend on how windows were grouped."""
    cases = _long_cases()
    short_q = "What is Southern California often abbreviated as?"
    short_c = "Southern California, often abbreviated SoCal, is a geographic and cultural region."
    questions = [short_q, *(c["question"] for c in cases), short_q]
    contexts = [short_c, *(c["context"] for c in cases), short_c + " It has 10 counties."]
    pairs = list(zip(questions, contexts, strict=True))

    calls = _record_batches(pipe128, monkeypatch)
    batched = pipe128(question=questions, context=contexts, doc_stride=32)
    windows = sum(len(e.rows) for e in pipe128.preprocess(pairs, doc_stride=32))
    assert sum(map(len, calls)) == windows > len(pairs)
    assert all(len(c) <= pipe128.batch_size for c in calls)
    assert len(calls) == -(-windows // pipe128.batch_size)  # one bucket: every batch but the last full
    one_by_one = [pipe128(question=q, context=c, doc_stride=32) for q, c in pairs]
    for a, b in zip(batched, one_by_one, strict=True):
        assert (a["answer"], a["start"], a["end"]) == (b["answer"], b["start"], b["end"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)

    calls = _record_batches(pipe, monkeypatch)
    pipe(question=questions, context=contexts)

    def bucket(n: int) -> int:
        return next(b for b in pipe.sequence_lengths if b >= n)

    assert len({bucket(n) for c in calls for n in c}) > 1
    assert all(len({bucket(n) for n in c}) == 1 and len(c) <= pipe.batch_size for c in calls)
