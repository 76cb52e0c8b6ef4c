"""Hugging Face checkpoint directories compiled directly (sparsejit.checkpoints) vs `transformers` (torch).

Reference: the torch model the checkpoint was saved from (random weights, fixed seed), run on the same
inputs. Tolerance: 1e-4 absolute on every output (fp32 kernels differ from torch's by ~1e-6 here). The
exported ONNX file is checked against onnxruntime on the same inputs, at the same tolerance.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import sparsejit
from sparsejit.checkpoints import CheckpointSource, build_checkpoint, export_checkpoint
from sparsejit.checkpoints.encoders import relative_position_buckets
from sparsejit.errors import CheckpointError
from tests import zoo

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4
BATCH, SEQ = 2, 24


def _inputs(directory: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Token ids with a padded second row (pad id where the mask is 0), token types on half of row 0."""
    config = json.loads((directory / "config.json").read_text())
    vocab, pad = config["vocab_size"], int(config.get("pad_token_id") or 0)
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(BATCH, SEQ), dtype=np.int64)
    ids[ids == pad] = pad + 3
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[1, SEQ - 7:] = 0
    ids[mask == 0] = pad
    types = np.zeros((BATCH, SEQ), np.int64)
    types[0, SEQ // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _torch_outputs(model, feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    return {n: out[n].float().numpy() for n in names}


def _feed_for(names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: feed[n] for n in names}


@pytest.mark.parametrize("head", zoo.HEADS)
@pytest.mark.parametrize("arch", zoo.CHECKPOINT_ARCHS)
def test_checkpoint_equals_transformers(arch: str, head: str) -> None:
    directory = zoo.random_checkpoint(arch, head)
    engine = sparsejit.compile(directory, batch_size=BATCH, sequence_length=SEQ)
    feed = _feed_for(engine.input_names, _inputs(directory))
    expected = _torch_outputs(zoo.random_encoder_torch(arch, head), feed, engine.output_names)
    got = engine.run(feed)
    assert engine.output_names == list(expected)
    for name, ref in expected.items():
        assert got[name].shape == ref.shape, name
        np.testing.assert_allclose(got[name], ref, atol=TOL, rtol=0, err_msg=f"{arch} {head} {name}")
    if arch in ("roberta", "xlm-roberta", "distilbert", "mpnet"):
        assert "token_type_ids" not in engine.input_names  # their tokenizers produce none


@pytest.mark.parametrize("arch", ["bert", "mpnet", "albert"])
def test_exported_onnx_runs_in_onnxruntime(arch: str, tmp_path: Path) -> None:
    directory = zoo.random_checkpoint(arch, "question_answering")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in directory.iterdir())
    out = export_checkpoint(directory, tmp_path / "model.onnx")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in directory.iterdir()) == before  # never written
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = _feed_for(names, _inputs(directory, seed=1))
    expected = _torch_outputs(zoo.random_encoder_torch(arch, "question_answering"), feed,
                              ["start_logits", "end_logits"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    for name, ref in expected.items():
        np.testing.assert_allclose(got[name], ref, atol=TOL, rtol=0, err_msg=name)
    compiled = sparsejit.compile(out, batch_size=BATCH, sequence_length=SEQ).run(feed)
    for name, ref in expected.items():
        np.testing.assert_allclose(compiled[name], ref, atol=TOL, rtol=0, err_msg=name)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints_compute_in_float32(dtype: str) -> None:
    directory = zoo.random_checkpoint("bert", "base", dtype=dtype)
    engine = sparsejit.compile(directory, batch_size=BATCH, sequence_length=SEQ)
    feed = _feed_for(engine.input_names, _inputs(directory))
    model = zoo.random_encoder_torch("bert", "base").to(getattr(torch, dtype)).float()  # the stored values
    expected = _torch_outputs(model, feed, ["last_hidden_state"])["last_hidden_state"]
    np.testing.assert_allclose(engine.run(feed)["last_hidden_state"], expected, atol=TOL, rtol=0)


def test_sharded_checkpoint() -> None:
    directory = zoo.random_checkpoint("electra", "token_classification", max_shard_size="2MB")
    assert (directory / "model.safetensors.index.json").is_file()
    assert len(list(directory.glob("*.safetensors"))) > 1
    engine = sparsejit.compile(directory, batch_size=BATCH, sequence_length=SEQ)
    feed = _feed_for(engine.input_names, _inputs(directory))
    expected = _torch_outputs(zoo.random_encoder_torch("electra", "token_classification"), feed, ["logits"])
    np.testing.assert_allclose(engine.run(feed)["logits"], expected["logits"], atol=TOL, rtol=0)


def test_head_chosen_by_caller_over_config() -> None:
    """The embeddings of a classification checkpoint: its encoder without the head."""
    directory = zoo.random_checkpoint("roberta", "sequence_classification")
    built = build_checkpoint(CheckpointSource(directory, "base"))
    assert [o.name for o in built.model.graph.output] == ["last_hidden_state"]
    assert build_checkpoint(directory).head == "sequence_classification"


@pytest.mark.parametrize("act", ["gelu_new", "relu", "silu"])
def test_hidden_act_variants(act: str) -> None:
    directory = zoo.random_checkpoint("bert", "base", hidden_act=act)
    engine = sparsejit.compile(directory, batch_size=BATCH, sequence_length=SEQ)
    feed = _feed_for(engine.input_names, _inputs(directory))
    model = zoo.random_encoder_torch("bert", "base", hidden_act=act)
    expected = _torch_outputs(model, feed, ["last_hidden_state"])["last_hidden_state"]
    np.testing.assert_allclose(engine.run(feed)["last_hidden_state"], expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("type_vocab_size", [1, 3])
def test_token_type_vocabulary_sizes(type_vocab_size: int) -> None:
    """One token type: its row is added everywhere and the model reads no token_type_ids; more: read."""
    directory = zoo.random_checkpoint("bert", "base", type_vocab_size=type_vocab_size)
    engine = sparsejit.compile(directory, batch_size=BATCH, sequence_length=SEQ)
    assert ("token_type_ids" in engine.input_names) == (type_vocab_size > 1)
    feed = _inputs(directory)
    feed["token_type_ids"][0, -3:] = type_vocab_size - 1
    feed = _feed_for(engine.input_names, feed)
    model = zoo.random_encoder_torch("bert", "base", type_vocab_size=type_vocab_size)
    expected = _torch_outputs(model, feed, ["last_hidden_state"])["last_hidden_state"]
    np.testing.assert_allclose(engine.run(feed)["last_hidden_state"], expected, atol=TOL, rtol=0)


def test_mpnet_relative_buckets_equal_transformers() -> None:
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    length = 514
    positions = torch.arange(length)
    expected = MPNetEncoder.relative_position_bucket(positions[None, :] - positions[:, None]).numpy()
    np.testing.assert_array_equal(relative_position_buckets(length), expected)


def _edited_checkpoint(tmp_path: Path, arch: str, **changes: object) -> Path:
    src = zoo.random_checkpoint(arch, "base")
    directory = tmp_path / "checkpoint"
    shutil.copytree(src, directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(("changes", "key"), [
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"hidden_act": "gelu_10"}, "hidden_act"),
    ({"model_type": "deberta-v2"}, "model_type"),
    ({"model_type": "gpt2"}, "model_type"),
    ({"num_attention_heads": 5}, "num_attention_heads"),
])
def test_unsupported_config_is_refused_naming_the_key(tmp_path: Path, changes: dict, key: str) -> None:
    directory = _edited_checkpoint(tmp_path, "bert", **changes)
    with pytest.raises(CheckpointError) as info:
        sparsejit.compile(directory, batch_size=1, sequence_length=8)
    assert info.value.key == key
    assert key in str(info.value)


def test_missing_weight_is_named(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    directory = _edited_checkpoint(tmp_path, "bert")
    weights = load_file(str(directory / "model.safetensors"))
    del weights["encoder.layer.1.attention.self.key.weight"]
    save_file(weights, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.attention\.self\.key\.weight"):
        sparsejit.compile(directory, batch_size=1, sequence_length=8)


def test_directory_without_weights_or_onnx(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(sparsejit.ModelLoadError, match="safetensors"):
        sparsejit.compile(tmp_path, batch_size=1, sequence_length=8)


def test_real_fine_tuned_checkpoints_equal_transformers() -> None:
    for name in zoo.SHARED_MODELS:
        directory = zoo.shared_dir(name)
        head = zoo.SHARED_HEADS[name]
        engine = sparsejit.compile(directory, batch_size=BATCH, sequence_length=SEQ)
        feed = _feed_for(engine.input_names, _inputs(directory, seed=3))
        expected = _torch_outputs(zoo.load_pretrained_torch(directory, head), feed, engine.output_names)
        for output, ref in expected.items():
            np.testing.assert_allclose(engine.run(feed)[output], ref, atol=TOL, rtol=0, err_msg=f"{name} {output}")


def test_sentence_transformers_checkpoint_pipeline_equals_encode() -> None:
    """all-MiniLM-L6-v2's checkpoint through the embeddings pipeline: mean pooling and Normalize from its
    modules.json, as sentence-transformers' encode (reference: transformers + the same pooling in torch)."""
    from sparsejit.model_wheels import minilm_dir

    directory = minilm_dir()
    if (directory / "model.onnx").is_file():
        pytest.skip(f"{directory} holds model.onnx: not a bare checkpoint")
    pipe = sparsejit.Pipeline.create("embeddings", model_path=directory, sequence_length=[32])
    texts = ["A man is eating food.", "The new movie is awesome, I loved every minute of it"]
    got = pipe(texts)
    model = zoo.load_pretrained_torch(directory, "base")
    expected = []
    for text in texts:
        enc = pipe.tokenizer.encode(text)
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([enc.ids]), attention_mask=torch.tensor([enc.attention_mask]),
                           token_type_ids=torch.tensor([enc.type_ids]))["last_hidden_state"][0].numpy()
        mean = hidden.mean(axis=0)
        expected.append(mean / np.linalg.norm(mean))
    np.testing.assert_allclose(got, np.stack(expected), atol=TOL, rtol=0)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert not math.isclose(float(np.abs(got).sum()), 0.0)


_WITHOUT_TORCH = zoo.HIDE_TORCH + r"""
import httpx
from sparsejit.serve.app import create_app
from sparsejit.serve.config import EndpointConfig, ServerConfig
from sparsejit.serve.testing import ServerThread

config = ServerConfig(endpoints=[EndpointConfig(name="emb", task="embeddings", model=sys.argv[1],
                                                sequence_length=32)])
with ServerThread(create_app(config)) as server:
    server.wait_ready(240)
    reply = httpx.post(f"{server.url}/v2/models/emb/infer", json={"inputs": ["a checkpoint, no torch"]})
    print(reply.status_code, reply.text[:200])
    assert reply.status_code == 200
    vector = reply.json()[0]
    assert len(vector) == 384 and abs(sum(v * v for v in vector) - 1.0) < 1e-4
assert "torch" not in sys.modules and "transformers" not in sys.modules
print("served without torch")
"""


def test_checkpoint_compiles_and_serves_without_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    from sparsejit.model_wheels import minilm_dir

    script = tmp_path / "serve_without_torch.py"
    script.write_text(_WITHOUT_TORCH)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, str(script), str(minilm_dir())], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "served without torch" in done.stdout


def test_export_command_writes_an_onnx_file_onnxruntime_runs(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sparsejit.serve.cli import main

    directory = zoo.random_checkpoint("distilbert", "token_classification")
    out = tmp_path / "ner.onnx"
    result = CliRunner().invoke(main, ["export", str(directory), str(out)])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = _feed_for([i.name for i in session.get_inputs()], _inputs(directory, seed=2))
    expected = _torch_outputs(zoo.random_encoder_torch("distilbert", "token_classification"), feed, ["logits"])
    np.testing.assert_allclose(session.run(["logits"], feed)[0], expected["logits"], atol=TOL, rtol=0)
    refused = CliRunner().invoke(main, ["export", str(directory), str(directory / "model.onnx")])
    assert refused.exit_code != 0 and "outside the checkpoint" in refused.output


def test_text_classification_pipeline_on_a_checkpoint_equals_transformers() -> None:
    directory = zoo.shared_dir("minilm-sentiment")
    pipe = sparsejit.Pipeline.create("text_classification", model_path=directory, sequence_length=[64])
    texts = ["the flight was late and the crew was rude", "great service, thank you so much!"]
    got = pipe(texts, top_k=None)
    model = zoo.load_pretrained_torch(directory, "sequence_classification")
    for text, result in zip(texts, got, strict=True):
        enc = pipe.tokenizer.encode(text)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc.ids]), attention_mask=torch.tensor([enc.attention_mask]),
                           token_type_ids=torch.tensor([enc.type_ids])).logits[0].numpy()
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        by_label = {r["label"]: r["score"] for r in result}
        for i, label in model.config.id2label.items():
            assert abs(by_label[label] - float(probs[i])) < TOL, (text, label)


@pytest.mark.parametrize("arch", ["bert", "mpnet", "albert", "distilbert"])
def test_built_graph_gets_the_fused_kernels_of_an_export(arch: str) -> None:
    """Every layer's attention becomes one fused Attention kernel and every Linear a fused product, as
    for a torch export of the same model (the same kernels run, so the same speed)."""
    directory = zoo.random_checkpoint(arch, "base")
    engine = sparsejit.compile(directory, batch_size=1, sequence_length=32)
    ops = [n.op_type for plan in engine._plans.values() for n in plan.step_nodes]
    layers = json.loads((directory / "config.json").read_text())
    n_layers = layers.get("num_hidden_layers") or layers.get("n_layers")
    assert ops.count("Attention") == n_layers, ops
    assert "Softmax" not in ops and "MatMul" not in ops, ops
