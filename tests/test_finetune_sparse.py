"""Sparse fine-tuning (`sparsejit sparsify MODEL OUT --finetune DATA`): schedule, masks, data readers,
resume, the exported files (exact zero blocks, sparsejit = onnxruntime), and the command without torch.

Tolerances: fp32 exports vs onnxruntime and vs the torch student 1e-4 abs on logits; dynamic-int8 exports
vs onnxruntime 2e-3 of the largest |logit| (the int8 tolerance of test_quantized)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

from sparsejit.training import Recipe, finetune_sparse  # noqa: E402
from sparsejit.training.data import build_features, read_examples, split_examples  # noqa: E402
from sparsejit.training.metrics import bio_spans, entity_f1  # noqa: E402
from sparsejit.training.pruning import BlockPruner, prunable_linears, target_sparsity  # noqa: E402
from sparsejit.training.trainer import Trainer  # noqa: E402
from tests import zoo  # noqa: E402

WORDS = ["good", "great", "fine", "love", "nice", "bad", "awful", "poor", "hate", "sad", "the", "a", "is", "was",
         "movie", "food", "day", "service", "john", "smith", "paris", "london", "went", "to", "with", "and",
         "what", "where", "who", "lives", "in", "city", "of", "capital"]


# --------------------------------------------------------------------------------------------- fixtures


def _tokenizer_json(path: Path) -> None:
    """A WordPiece tokenizer over WORDS (BERT normaliser, [CLS]/[SEP] template): no download needed."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(path))


def _model_dir(tmp: Path, head: str, **config: object) -> Path:
    import shutil

    src = zoo.random_checkpoint("bert", head, **config)
    d = tmp / f"model-{head}"
    shutil.copytree(src, d)
    _tokenizer_json(d / "tokenizer.json")
    return d


def _sentiment_csv(path: Path, n: int, seed: int, labels: tuple[str, str] = ("LABEL_0", "LABEL_1")) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "text"])  # column order as in ../shared/data/sentiment-train.csv
        for _ in range(n):
            positive = bool(rng.integers(2))
            words = list(rng.choice(WORDS[10:18], size=int(rng.integers(3, 12))))
            words.insert(int(rng.integers(len(words))), rng.choice(WORDS[:5] if positive else WORDS[5:10]))
            w.writerow([labels[int(positive)], " ".join(words)])


def _blocks_zero(w: np.ndarray, r: int, c: int) -> float:
    """Fraction of r x c blocks of a [K, N] weight that are all zero (independent of sparsejit's code)."""
    k, n = w.shape
    assert k % r == 0 and n % c == 0
    return float((w.reshape(k // r, r, n // c, c) == 0).all(axis=(1, 3)).mean())


def _encoder_weights(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if ".encoder.layer." in t.name and len(t.dims) == 2 and "weight" in t.name
            and t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT8)}


def _feed(path: Path, rows: int = 3, seq: int = 12) -> dict[str, np.ndarray]:
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    rng = np.random.default_rng(1)
    arrays = {"input_ids": rng.integers(5, 5 + len(WORDS), (rows, seq)).astype(np.int64),
              "attention_mask": np.ones((rows, seq), np.int64), "token_type_ids": np.zeros((rows, seq), np.int64)}
    arrays["attention_mask"][0, 8:] = 0
    return {k: arrays[k] for k in names}


# ---------------------------------------------------------------------------------------------- units


def test_cubic_schedule() -> None:
    assert target_sparsity(0.0, 1.0, 5.0, 0.0, 0.8) == 0.0  # before the start: dense
    assert target_sparsity(1.0, 1.0, 5.0, 0.1, 0.8) == pytest.approx(0.1)
    assert target_sparsity(3.0, 1.0, 5.0, 0.0, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert target_sparsity(5.0, 1.0, 5.0, 0.0, 0.8) == 0.8 and target_sparsity(9.0, 1.0, 5.0, 0.0, 0.8) == 0.8
    assert target_sparsity(3.0, 1.0, 5.0, 0.0, 0.8, "linear") == pytest.approx(0.4)
    steps = [target_sparsity(e / 10, 0.0, 5.0, 0.0, 0.9) for e in range(60)]
    assert steps == sorted(steps)  # never decreases


@pytest.mark.parametrize("structure,r,c", [("4x16", 4, 16), ("1x16", 1, 16), ("4x1", 4, 1), ("unstructured", 1, 1)])
def test_block_pruner_masks_whole_blocks_and_only_grows(structure: str, r: int, c: int) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 64))
    pruner = BlockPruner(model, structure)
    pruner.prune_to(0.5)
    first = {n: m.clone() for n, m in pruner.state_dict().items()}
    pruner.prune_to(0.75)
    for name, layer in pruner.layers.items():
        w_kn = layer.module.weight.detach().numpy().T  # [K, N]: r along inputs, c along outputs
        assert _blocks_zero(w_kn, r, c) == pytest.approx(0.75)
        assert np.count_nonzero(w_kn) == pytest.approx(0.25 * w_kn.size)
        assert ((~first[name]) & layer.mask).sum() == 0  # a pruned weight is never revived
    with torch.no_grad():  # an optimiser step writes into pruned weights; apply() zeroes them again
        for layer in pruner.layers.values():
            layer.module.weight.add_(1.0)
    pruner.apply()
    assert pruner.sparsity() == pytest.approx(0.75)


def test_prunable_layers_leave_embeddings_and_heads_dense(tmp_path: Path) -> None:
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(zoo.random_checkpoint("bert", "sequence_classification")))
    names = sorted(prunable_linears(model))
    assert len(names) == 3 * 6 and all(".encoder.layer." in n for n in names)


def test_recipe_round_trip_and_unknown_keys(tmp_path: Path) -> None:
    recipe = Recipe(sparsity=0.9, structure="4x1", epochs=3, prune_end_epoch=2)
    path = recipe.save(tmp_path / "r.yaml")
    assert Recipe.load(path) == recipe
    path.write_text(path.read_text() + "learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        Recipe.load(path)
    with pytest.raises(ValueError, match="prune_end_epoch"):
        Recipe(epochs=2, prune_end_epoch=3)


def test_readers_and_qa_targets(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    _tokenizer_json(tmp_path / "tok.json")
    tok = Tokenizer.from_file(str(tmp_path / "tok.json"))
    (tmp_path / "ner.conll").write_text("john\tB-PER\nsmith\tI-PER\nwent\tO\nto\tO\nparis\tB-LOC\n\t\n"
                                        "london\tB-LOC\nis\tO\n")
    ner = read_examples(tmp_path / "ner.conll", "token_classification")
    assert [e.text for e in ner] == [["john", "smith", "went", "to", "paris"], ["london", "is"]]
    feats = build_features(ner, "token_classification", tok, {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3}, 32)
    assert feats[0].labels.tolist() == [-100, 1, 2, 0, 0, 3, -100]
    context = "john smith lives in paris . " * 6 + "london is the capital"
    squad = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "what is the capital", "answers": [{"text": "london", "answer_start":
                                                                     context.index("london")}]},
        {"id": "q2", "question": "who", "is_impossible": True, "answers": []}]}]}]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    qa = read_examples(tmp_path / "squad.json", "question_answering")
    feats = build_features(qa, "question_answering", tok, {}, max_length=24, doc_stride=8)
    assert len(feats) > 2  # the long context is windowed
    found = [f for f in feats if f.example == 0 and f.start > 0]
    assert found and all(tok.decode(f.input_ids[f.start:f.end + 1].tolist()) == "london" for f in found)
    assert all(f.start == f.end == 0 for f in feats if f.example == 1)
    train, held = split_examples(ner * 5, 0.2, seed=0)
    assert len(held) == 2 and len(train) == 8


def test_entity_f1_is_strict_on_spans() -> None:
    assert bio_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4)}
    from sparsejit.training.data import Example, Feature

    ex = [Example(text=["a", "b", "c"], label=["B-PER", "I-PER", "O"])]
    labels = np.array([-100, 0, 0, 0, -100])
    feat = [Feature(np.zeros(5, np.int64), np.zeros(5, np.int64), 0, labels=labels)]
    id2label = {0: "O", 1: "B-PER", 2: "I-PER"}

    def logits(tags: list[int]) -> list[np.ndarray]:
        out = np.zeros((5, 3))
        for t, tag in enumerate(tags, start=1):
            out[t, tag] = 1.0
        return [out]

    assert entity_f1(logits([1, 2, 0]), feat, ex, id2label) == 1.0
    assert entity_f1(logits([1, 0, 0]), feat, ex, id2label) == 0.0  # a partial span is a miss


# ------------------------------------------------------------------------------------------ training


def _tiny_recipe(**changes: object) -> Recipe:
    base = dict(task="text_classification", sparsity=0.5, structure="4x16", epochs=2.0, prune_end_epoch=1.0,
                prune_updates_per_epoch=2, batch_size=16, max_length=32, learning_rate=1e-3, quantize="dynamic")
    return Recipe(**{**base, **changes})


def test_resume_after_interruption_gives_the_same_weights(tmp_path: Path) -> None:
    import transformers

    model_dir = _model_dir(tmp_path, "sequence_classification")
    _sentiment_csv(tmp_path / "train.csv", 64, seed=0)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    examples = read_examples(tmp_path / "train.csv", "text_classification")
    feats = build_features(examples, "text_classification", tok, {"LABEL_0": 0, "LABEL_1": 1}, 32)
    recipe = _tiny_recipe()

    def fresh() -> torch.nn.Module:
        return transformers.AutoModelForSequenceClassification.from_pretrained(str(model_dir))

    whole = Trainer(fresh(), recipe, feats, 0, tmp_path / "a", progress=False)
    whole.train()

    class Interrupt(Exception):
        pass

    def stop_after_first_epoch(model: torch.nn.Module) -> float:
        raise Interrupt

    first = Trainer(fresh(), recipe, feats, 0, tmp_path / "b", evaluate=stop_after_first_epoch, progress=False)
    with pytest.raises(Interrupt):
        first.train()
    first.save_checkpoint()  # what the end of epoch 1 writes
    resumed = Trainer(fresh(), recipe, feats, 0, tmp_path / "b", progress=False)
    assert resumed.try_resume() and resumed.step == whole.steps_per_epoch
    resumed.train()
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    other = Trainer(fresh(), _tiny_recipe(seed=7), feats, 0, tmp_path / "b", progress=False)
    assert not other.try_resume()  # a checkpoint of other settings is not picked up


def test_finetune_text_classification_end_to_end(tmp_path: Path) -> None:
    import sparsejit

    model_dir = _model_dir(tmp_path, "sequence_classification")
    _sentiment_csv(tmp_path / "train.csv", 96, seed=0)
    _sentiment_csv(tmp_path / "eval.csv", 32, seed=1)
    out = tmp_path / "out" / "sparse.onnx"
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    report = finetune_sparse(model_dir, out, tmp_path / "train.csv", _tiny_recipe(), eval_file=tmp_path / "eval.csv",
                             measure_speed=False, progress=False, say=lambda m: None)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before  # the model is only read
    fp32 = out.with_name("sparse.fp32.onnx")
    for f in (out, fp32, out.with_name("sparse.recipe.yaml"), out.with_name("sparse.report.json")):
        assert f.is_file(), f
    assert Recipe.load(out.with_name("sparse.recipe.yaml")) == report.recipe
    assert report.recipe.train_sha256 and report.recipe.teacher == str(model_dir)

    # pruned weights exactly zero in 4x16 blocks, in the fp32 and in the int8 file
    for path in (fp32, out):
        weights = _encoder_weights(path)
        assert len(weights) == 18, sorted(weights)
        for name, w in weights.items():
            assert _blocks_zero(w, 4, 16) >= 0.5 - 1e-9, (path.name, name)

    # the exported fp32 graph is the torch student; both files run the same in sparsejit and onnxruntime
    import transformers

    student = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(out.with_name("sparse.work") / "student")).eval()
    feed = _feed(fp32)
    with torch.no_grad():
        ref = student(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    ort_fp32 = ort.InferenceSession(str(fp32)).run(None, feed)[0]
    np.testing.assert_allclose(ort_fp32, ref, atol=1e-4)
    np.testing.assert_allclose(sparsejit.compile(str(fp32), batch_size=3, sequence_length=12).run(feed)["logits"],
                               ref, atol=1e-4)
    ort_int8 = ort.InferenceSession(str(out)).run(None, feed)[0]
    ours = sparsejit.compile(str(out), batch_size=3, sequence_length=12).run(feed)["logits"]
    np.testing.assert_allclose(ours, ort_int8, atol=2e-3 * float(np.abs(ort_int8).max()))

    names = [r.model for r in report.rows]
    assert names[0].startswith("dense") and any(n.startswith("one-shot") for n in names)
    assert names[-1].startswith("fine-tuned sparse 4x16 + int8")
    data = json.loads(out.with_name("sparse.report.json").read_text())
    assert data["sparsity"] == pytest.approx(report.sparsity) and len(data["history"]) == 2
    assert not (out.with_name("sparse.work") / "checkpoint.pt").exists()  # removed after success


@pytest.mark.parametrize("task,head", [("token_classification", "base"), ("question_answering", "question_answering")])
def test_finetune_ner_and_qa_end_to_end(tmp_path: Path, task: str, head: str) -> None:
    model_dir = _model_dir(tmp_path, head)
    rng = np.random.default_rng(0)
    if task == "token_classification":
        lines = []
        for _ in range(40):
            for w in rng.choice(WORDS[10:], size=6):
                tag = "B-PER" if w in ("john", "smith") else "B-LOC" if w in ("paris", "london") else "O"
                lines.append(f"{w}\t{tag}")
            lines.append("\t")
        train = tmp_path / "train.conll"
        train.write_text("\n".join(lines) + "\n")
    else:
        qas, context = [], "john lives in paris . smith lives in london . the capital is paris"
        for i in range(24):
            name = ["john", "smith"][i % 2]
            city = "paris" if name == "john" else "london"
            qas.append({"id": str(i), "question": f"where {name} lives",
                        "answers": [{"text": city, "answer_start": context.index(city)}]})
        train = tmp_path / "train.json"
        train.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}))
    out = tmp_path / "out"
    report = finetune_sparse(model_dir, out, train, _tiny_recipe(task=task, quantize="none", eval_split=0.25,
                                                                   structure="1x16"),
                             measure_speed=False, progress=False, say=lambda m: None)
    assert (out / "model.onnx").is_file() and (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    for name, w in _encoder_weights(out / "model.onnx").items():
        assert _blocks_zero(w, 1, 16) >= 0.5 - 1e-9, name
    assert report.rows and all(0.0 <= r.score <= 1.0 for r in report.rows)
    import sparsejit

    pipe = sparsejit.Pipeline.create(task, out, sequence_length=32)  # the output directory is a model directory
    result = (pipe("john went to paris") if task == "token_classification"
              else pipe(question="where john lives", context="john lives in paris"))
    assert result is not None


# -------------------------------------------------------------------------------- without the extra


_WITHOUT_TORCH = zoo.HIDE_TORCH + r"""
import sparsejit
import sparsejit.training
from sparsejit.serve.cli import main

sys.argv = ["sparsejit", *sys.argv[1:]]
main()
"""


def test_command_without_torch_names_the_extra(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path, "sequence_classification")
    _sentiment_csv(tmp_path / "train.csv", 8, seed=0)
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, "sparsify", str(model_dir), str(tmp_path / "o.onnx"),
                           "--finetune", str(tmp_path / "train.csv")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'sparsejit[train]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_finetune_flags_refuse_one_shot_options(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sparsejit.serve.cli import main

    model_dir = _model_dir(tmp_path, "sequence_classification")
    _sentiment_csv(tmp_path / "train.csv", 8, seed=0)
    runner = CliRunner()
    res = runner.invoke(main, ["sparsify", str(model_dir), str(tmp_path / "o.onnx"), "--finetune",
                               str(tmp_path / "train.csv"), "--method", "obs"])
    assert res.exit_code == 2 and "one-shot" in res.output
    res = runner.invoke(main, ["sparsify", str(model_dir), str(tmp_path / "o.onnx"), "--epochs", "3"])
    assert res.exit_code == 2 and "--finetune" in res.output
    res = runner.invoke(main, ["sparsify", str(model_dir), str(model_dir / "o.onnx"), "--finetune",
                               str(tmp_path / "train.csv")])
    assert res.exit_code == 2 and "outside the model directory" in res.output


# ------------------------------------------------------------------------------------ real model, real data


@pytest.mark.slow
def test_sentiment_fine_tuning_recovers_what_one_shot_loses(tmp_path: Path) -> None:
    """minilm-sentiment pruned 50 % in 4x16 blocks: one epoch on 1,500 training tweets (a short run; the full
    recipe is bench.sparse_finetune) already recovers much of what one-shot magnitude pruning at the same
    settings loses; sparsejit's accuracy of the written int8 file equals onnxruntime's on the same 300
    held-out tweets (± 2)."""
    model_dir = zoo.shared_dir("minilm-sentiment")
    train_csv = zoo.SHARED_DIR / "data" / "sentiment-train.csv"
    if not train_csv.is_file():
        pytest.skip(f"{train_csv} is absent (../shared/ is not beside this checkout)")
    with train_csv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:1500]
    with (model_dir / "eval.csv").open(newline="", encoding="utf-8") as fh:
        held = list(csv.DictReader(fh))[:300]
    for name, data in (("train.csv", rows), ("eval.csv", held)):
        with (tmp_path / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["label", "text"])
            writer.writeheader()
            writer.writerows({"label": r["label"], "text": r["text"]} for r in data)
    recipe = Recipe(sparsity=0.5, structure="4x16", epochs=1.0, prune_end_epoch=0.5, max_length=64,
                    quantize="dynamic")
    out = tmp_path / "sparse.onnx"
    report = finetune_sparse(model_dir, out, tmp_path / "train.csv", recipe, eval_file=tmp_path / "eval.csv",
                             measure_speed=False, progress=False, say=lambda m: None)
    scores = {r.model: r.score for r in report.rows}
    one_shot = scores["one-shot magnitude 4x16 + int8 (dynamic)"]
    tuned = scores["fine-tuned sparse 4x16 + int8 (dynamic)"]
    assert scores["dense (teacher), fp32"] > 0.8
    assert tuned >= 0.7 and tuned >= one_shot + 0.08, scores  # observed (Zen 5): 0.74 vs 0.62

    from sparsejit.tasks.base import load_tokenizer

    tok = load_tokenizer(model_dir)
    tok.no_padding()
    tok.enable_truncation(64)
    session = ort.InferenceSession(str(out))
    label2id = {"NEGATIVE": 0, "POSITIVE": 1}
    hits = 0
    for r in held:
        enc = tok.encode(r["text"])
        feed = {"input_ids": np.array([enc.ids]), "attention_mask": np.ones((1, len(enc.ids)), np.int64),
                "token_type_ids": np.zeros((1, len(enc.ids)), np.int64)}
        hits += int(np.argmax(session.run(None, feed)[0][0]) == label2id[r["label"]])
    assert abs(hits - round(tuned * len(held))) <= 2, (hits, tuned)


def test_static_int8_keeps_the_zero_blocks(tmp_path: Path) -> None:
    """`quantize="static"` (QDQ, per channel, calibrated on unpadded training texts): the int8 weights keep
    every pruned block zero, and sparsejit runs the file as onnxruntime does (argmax equal; 2e-2 of the
    largest |logit|: QDQ's requantised activations round differently in the two engines' orders)."""
    import sparsejit

    model_dir = _model_dir(tmp_path, "sequence_classification")
    _sentiment_csv(tmp_path / "train.csv", 64, seed=0)
    out = tmp_path / "static.onnx"
    finetune_sparse(model_dir, out, tmp_path / "train.csv", _tiny_recipe(quantize="static", epochs=1.0),
                    measure_speed=False, progress=False, say=lambda m: None)
    weights = _encoder_weights(out)
    assert len(weights) == 18 and all(w.dtype == np.int8 for w in weights.values())
    for name, w in weights.items():
        assert _blocks_zero(w, 4, 16) >= 0.5 - 1e-9, name
    feed = _feed(out)
    expected = ort.InferenceSession(str(out)).run(None, feed)[0]
    ours = sparsejit.compile(str(out), batch_size=3, sequence_length=12).run(feed)["logits"]
    np.testing.assert_allclose(ours, expected, atol=2e-2 * float(np.abs(expected).max()))
    assert (ours.argmax(-1) == expected.argmax(-1)).all()


def test_recipe_file_repeats_a_run_exactly(tmp_path: Path) -> None:
    """The recipe written beside the output, given back with --recipe, gives the same weights bit for bit."""
    from click.testing import CliRunner

    from sparsejit.serve.cli import main

    model_dir = _model_dir(tmp_path, "sequence_classification")
    _sentiment_csv(tmp_path / "train.csv", 48, seed=0)
    runner = CliRunner()
    first = runner.invoke(main, ["sparsify", str(model_dir), str(tmp_path / "a" / "m.onnx"), "--finetune",
                                 str(tmp_path / "train.csv"), "--sparsity", "0.5", "--structure", "1x16",
                                 "--epochs", "1", "--prune-end-epoch", "0.5", "--batch-size", "16", "--seed", "3",
                                 "--max-length", "32", "--eval-split", "0.25", "--no-speed", "--no-baseline"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(main, ["sparsify", str(model_dir), str(tmp_path / "b" / "m.onnx"), "--finetune",
                                 str(tmp_path / "train.csv"), "--recipe", str(tmp_path / "a" / "m.recipe.yaml"),
                                 "--no-speed", "--no-baseline"])
    assert again.exit_code == 0, again.output
    assert Recipe.load(tmp_path / "a" / "m.recipe.yaml") == Recipe.load(tmp_path / "b" / "m.recipe.yaml")
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "a" / "m.onnx")).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "b" / "m.onnx")).graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert "sparsity" in first.output and "fine-tuned sparse 1x16" in first.output
