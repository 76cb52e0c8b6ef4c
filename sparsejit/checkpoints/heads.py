"""Task heads over last_hidden_state, named and ordered as the `transformers` models' output fields."""

from __future__ import annotations

import numpy as np

from sparsejit.checkpoints.config import EncoderConfig
from sparsejit.checkpoints.onnx_builder import OnnxBuilder

# output name -> rank, per head
OUTPUTS = {
    "base": {"last_hidden_state": 3},
    "sequence_classification": {"logits": 2},
    "token_classification": {"logits": 3},
    "question_answering": {"start_logits": 2, "end_logits": 2},
}


def _first_token(b: OnnxBuilder, h: str) -> str:
    return b.op("Gather", [h, b.const(np.array(0, np.int64), "zero")], "/head", axis=1)


def _sequence_classification(b: OnnxBuilder, cfg: EncoderConfig, p: str, h: str) -> None:
    cls = _first_token(b, h)
    if cfg.model_type in ("bert", "albert"):  # pooler (tanh) then classifier
        pooler = f"{p}pooler.dense" if cfg.model_type == "bert" else f"{p}pooler"
        pooled = b.op("Tanh", [b.linear(cls, pooler, "/pooler")], "/pooler")
        b.linear(pooled, "classifier", "/classifier", out_name="logits")
    elif cfg.model_type == "distilbert":  # pre_classifier, ReLU, classifier
        hidden = b.op("Relu", [b.linear(cls, "pre_classifier", "/pre_classifier")], "/pre_classifier")
        b.linear(hidden, "classifier", "/classifier", out_name="logits")
    else:  # RoBERTa / XLM-R / MPNet / ELECTRA classification head: dense, tanh (ELECTRA: gelu), out_proj
        dense = b.linear(cls, "classifier.dense", "/classifier/dense")
        hidden = (b.activation(dense, "gelu", "/classifier") if cfg.model_type == "electra"
                  else b.op("Tanh", [dense], "/classifier"))
        b.linear(hidden, "classifier.out_proj", "/classifier/out_proj", out_name="logits")


def _question_answering(b: OnnxBuilder, h: str) -> None:
    both = b.linear(h, "qa_outputs", "/qa_outputs")
    start, end = b.op("Split", [both, b.const(np.array([1, 1], np.int64), "split")], "/qa_outputs",
                      outputs=2, axis=-1)
    last = b.const(np.array([-1], np.int64), "last_axis")
    b.op("Squeeze", [start, last], "/qa_outputs", out_names=["start_logits"])
    b.op("Squeeze", [end, last], "/qa_outputs", out_names=["end_logits"])


def add_head(b: OnnxBuilder, cfg: EncoderConfig, p: str, head: str, h: str) -> dict[str, int]:
    """Append `head` over last_hidden_state `h`; returns the graph outputs it produced and their ranks."""
    if head == "base":
        b.op("Identity", [h], "/output", out_names=["last_hidden_state"])
    elif head == "sequence_classification":
        _sequence_classification(b, cfg, p, h)
    elif head == "token_classification":
        b.linear(h, "classifier", "/classifier", out_name="logits")
    else:
        _question_answering(b, h)
    return OUTPUTS[head]
