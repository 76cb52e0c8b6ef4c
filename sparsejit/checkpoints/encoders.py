"""The encoders of the BERT family as ONNX graphs: embeddings, then the transformer layers.

Each architecture differs in its weight names, its position ids, its embedding projection and (MPNet) a
relative position bias; the attention and feed-forward blocks are the same computation, spelled the
way the attention and epilogue fusions of `sparsejit.graph` recognise in torch exports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from sparsejit.checkpoints.config import EncoderConfig
from sparsejit.checkpoints.onnx_builder import OnnxBuilder
from sparsejit.errors import CheckpointError

_BASE_PREFIX = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "distilbert": "distilbert",
                "albert": "albert", "electra": "electra", "mpnet": "mpnet"}


@dataclass(frozen=True)
class Inputs:
    input_ids: str = "input_ids"
    attention_mask: str = "attention_mask"
    token_type_ids: str | None = None


def weight_prefix(cfg: EncoderConfig, b: OnnxBuilder) -> str:
    """"bert." when the checkpoint was saved from a head model, "" from the bare encoder."""
    probe = "embeddings.word_embeddings.weight"
    base = _BASE_PREFIX[cfg.model_type]
    if b.has(f"{base}.{probe}"):
        return f"{base}."
    if b.has(probe):
        return ""
    raise CheckpointError(f"the checkpoint has neither {base}.{probe!s} nor {probe}: not a {cfg.model_type} "
                          "checkpoint, or its weights are missing", f"{base}.{probe}")


def _sequence_length(b: OnnxBuilder, ids: str) -> str:
    """[s] of input_ids [b, s], for slicing tables."""
    shape = b.op("Shape", [ids], "/embeddings")
    return b.op("Slice", [shape, b.const(np.array([1], np.int64), "one_index"),
                          b.const(np.array([2], np.int64), "two_index")], "/embeddings")


def _first_rows(b: OnnxBuilder, table: str, rows: str) -> str:
    """table[:rows] (position embeddings of positions 0..s-1)."""
    return b.op("Slice", [table, b.const(np.array([0], np.int64), "zero_index"), rows,
                          b.const(np.array([0], np.int64), "zero_index")], "/embeddings")


def _positions_from_ids(b: OnnxBuilder, cfg: EncoderConfig, ids: str) -> str:
    """transformers' create_position_ids_from_input_ids: cumsum of non-pad tokens, offset by the pad id."""
    pad = b.const(np.array(cfg.pad_token_id, np.int64), "pad_id")
    not_pad = b.op("Cast", [b.op("Not", [b.op("Equal", [ids, pad], "/positions")], "/positions")], "/positions",
                   to=TensorProto.INT64)
    counted = b.op("CumSum", [not_pad, b.const(np.array(1, np.int64), "axis1")], "/positions")
    return b.op("Add", [b.op("Mul", [counted, not_pad], "/positions"), pad], "/positions")


def embeddings(b: OnnxBuilder, cfg: EncoderConfig, p: str, inputs: Inputs) -> str:
    """[b, s, hidden]: word + position (+ token type) embeddings, LayerNorm, projection if any."""
    e = f"{p}embeddings."
    words = b.op("Gather", [b.weight(f"{e}word_embeddings.weight"), inputs.input_ids], "/embeddings")
    table = b.weight(f"{e}position_embeddings.weight")
    if cfg.positions_from_ids:
        positions = b.op("Gather", [table, _positions_from_ids(b, cfg, inputs.input_ids)], "/embeddings")
    else:
        positions = _first_rows(b, table, _sequence_length(b, inputs.input_ids))
    x = b.op("Add", [words, positions], "/embeddings")
    if cfg.type_vocab_size > 0 and cfg.model_type != "distilbert":
        types = f"{e}token_type_embeddings.weight"
        if inputs.token_type_ids:
            x = b.op("Add", [x, b.op("Gather", [b.weight(types), inputs.token_type_ids], "/embeddings")],
                     "/embeddings")
        else:  # one token type (RoBERTa): its row is added to every position
            x = b.op("Add", [x, b.const(b.checkpoint_array(types)[0], "token_type_row")], "/embeddings")
    x = b.layer_norm(x, f"{e}LayerNorm", cfg.layer_norm_eps, "/embeddings")
    if cfg.model_type == "electra" and b.has(f"{p}embeddings_project.weight"):
        x = b.linear(x, f"{p}embeddings_project", "/embeddings_project")
    if cfg.model_type == "albert":
        x = b.linear(x, f"{p}encoder.embedding_hidden_mapping_in", "/embedding_hidden_mapping_in")
    return x


def _heads(b: OnnxBuilder, cfg: EncoderConfig, x: str, hint: str, perm: list[int]) -> str:
    shape = b.const(np.array([0, 0, cfg.num_heads, cfg.head_size], np.int64), "head_shape")
    return b.op("Transpose", [b.op("Reshape", [x, shape], hint)], hint, perm=perm)


def self_attention(b: OnnxBuilder, cfg: EncoderConfig, x: str, mask: str, q: str, k: str, v: str,
                   hint: str, position_bias: str | None = None) -> str:
    """Multi-head attention of the Linear layers named q, k, v: [b, s, hidden] context (before output)."""
    qh = _heads(b, cfg, b.linear(x, q, f"{hint}/query"), f"{hint}/query", [0, 2, 1, 3])
    kt = _heads(b, cfg, b.linear(x, k, f"{hint}/key"), f"{hint}/key", [0, 2, 3, 1])
    vh = _heads(b, cfg, b.linear(x, v, f"{hint}/value"), f"{hint}/value", [0, 2, 1, 3])
    scores = b.op("MatMul", [qh, kt], hint)
    scores = b.op("Div", [scores, b.const(math.sqrt(cfg.head_size), "sqrt_head_size")], hint)
    if position_bias:
        scores = b.op("Add", [scores, position_bias], hint)
    probs = b.op("Softmax", [b.op("Add", [scores, mask], hint)], hint, axis=-1)
    context = b.op("Transpose", [b.op("MatMul", [probs, vh], hint)], hint, perm=[0, 2, 1, 3])
    return b.op("Reshape", [context, b.const(np.array([0, 0, cfg.hidden_size], np.int64), "hidden_shape")], hint)


def _block(b: OnnxBuilder, cfg: EncoderConfig, x: str, mask: str, names: dict[str, str], hint: str,
           position_bias: str | None = None) -> str:
    """Post-LayerNorm transformer block: attention + residual + LN, feed-forward + residual + LN."""
    context = self_attention(b, cfg, x, mask, names["q"], names["k"], names["v"], f"{hint}/attention", position_bias)
    attended = b.linear(context, names["o"], f"{hint}/attention/output")
    x = b.layer_norm(b.op("Add", [attended, x], hint), names["ln1"], cfg.layer_norm_eps, f"{hint}/attention")
    inner = b.activation(b.linear(x, names["ffn_in"], f"{hint}/intermediate"), cfg.hidden_act, f"{hint}/activation")
    out = b.linear(inner, names["ffn_out"], f"{hint}/output")
    return b.layer_norm(b.op("Add", [out, x], hint), names["ln2"], cfg.layer_norm_eps, f"{hint}/output")


def _bert_names(prefix: str) -> dict[str, str]:
    return {"q": f"{prefix}attention.self.query", "k": f"{prefix}attention.self.key",
            "v": f"{prefix}attention.self.value", "o": f"{prefix}attention.output.dense",
            "ln1": f"{prefix}attention.output.LayerNorm", "ffn_in": f"{prefix}intermediate.dense",
            "ffn_out": f"{prefix}output.dense", "ln2": f"{prefix}output.LayerNorm"}


def _distilbert_names(prefix: str) -> dict[str, str]:
    return {"q": f"{prefix}attention.q_lin", "k": f"{prefix}attention.k_lin", "v": f"{prefix}attention.v_lin",
            "o": f"{prefix}attention.out_lin", "ln1": f"{prefix}sa_layer_norm", "ffn_in": f"{prefix}ffn.lin1",
            "ffn_out": f"{prefix}ffn.lin2", "ln2": f"{prefix}output_layer_norm"}


def _albert_names(prefix: str) -> dict[str, str]:
    return {"q": f"{prefix}attention.query", "k": f"{prefix}attention.key", "v": f"{prefix}attention.value",
            "o": f"{prefix}attention.dense", "ln1": f"{prefix}attention.LayerNorm", "ffn_in": f"{prefix}ffn",
            "ffn_out": f"{prefix}ffn_output", "ln2": f"{prefix}full_layer_layer_norm"}


def _mpnet_names(prefix: str) -> dict[str, str]:
    return {"q": f"{prefix}attention.attn.q", "k": f"{prefix}attention.attn.k", "v": f"{prefix}attention.attn.v",
            "o": f"{prefix}attention.attn.o", "ln1": f"{prefix}attention.LayerNorm",
            "ffn_in": f"{prefix}intermediate.dense", "ffn_out": f"{prefix}output.dense",
            "ln2": f"{prefix}output.LayerNorm"}


def relative_position_buckets(length: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
    """MPNet's (T5's bidirectional) bucket of each relative position, [length, length] int64, computed in
    float32 as transformers' `relative_position_bucket` does so the buckets match at their boundaries."""
    positions = np.arange(length, dtype=np.int64)
    n = -(positions[None, :] - positions[:, None])
    half = num_buckets // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    far = np.maximum(n, max_exact).astype(np.float32)  # the near ones take `n` below; no log(0)
    ratio = np.log(far / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (ratio * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return ret + np.where(n < max_exact, n, large)


def _position_bias(b: OnnxBuilder, cfg: EncoderConfig, p: str, ids: str) -> str:
    """[1, heads, s, s] bias of MPNet's relative positions: a bucket table sliced to s, then gathered."""
    table = b.const(relative_position_buckets(cfg.max_positions), "relative_position_buckets")
    s = _sequence_length(b, ids)
    zeros = b.const(np.array([0, 0], np.int64), "zero_pair")
    ends = b.op("Concat", [s, s], "/position_bias", axis=0)
    buckets = b.op("Slice", [table, zeros, ends, b.const(np.array([0, 1], np.int64), "axes01")], "/position_bias")
    values = b.op("Gather", [b.weight(f"{p}encoder.relative_attention_bias.weight"), buckets], "/position_bias")
    heads_first = b.op("Transpose", [values], "/position_bias", perm=[2, 0, 1])
    return b.op("Unsqueeze", [heads_first, b.const(np.array([0], np.int64), "axis0")], "/position_bias")


def encoder(b: OnnxBuilder, cfg: EncoderConfig, p: str, x: str, mask: str, inputs: Inputs) -> str:
    """The stack of transformer layers over the embeddings `x`; returns last_hidden_state."""
    if cfg.model_type == "albert":
        per_group = cfg.num_layers // cfg.num_hidden_groups
        for i in range(cfg.num_layers):
            group = i // per_group
            for j in range(cfg.inner_group_num):
                names = _albert_names(f"{p}encoder.albert_layer_groups.{group}.albert_layers.{j}.")
                x = _block(b, cfg, x, mask, names, f"/encoder/layer.{i}.{j}")
        return x
    bias = _position_bias(b, cfg, p, inputs.input_ids) if cfg.model_type == "mpnet" else None
    for i in range(cfg.num_layers):
        if cfg.model_type == "distilbert":
            names = _distilbert_names(f"{p}transformer.layer.{i}.")
        elif cfg.model_type == "mpnet":
            names = _mpnet_names(f"{p}encoder.layer.{i}.")
        else:
            names = _bert_names(f"{p}encoder.layer.{i}.")
        x = _block(b, cfg, x, mask, names, f"/encoder/layer.{i}", bias)
    return x
