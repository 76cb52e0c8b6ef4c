"""`sparsify`: prune a dense ONNX transformer to a target sparsity, writing a normal ONNX file.

Which weights: the constant 2-D weights of MatMul (``x @ W``) and Gemm nodes, seen as [K, N]. By
default the embeddings (weights read by Gather) and the task heads are left dense. A *head* is a
MatMul/Gemm from whose output a graph output is reachable without passing a normalisation
(LayerNormalization, or the Sub of a decomposed one): pooler, classifier, QA / token heads — while
every encoder projection is followed by an Add + LayerNorm.

Methods:
- ``magnitude``: zero the blocks of smallest L2 norm, per layer or with one global threshold.
- ``obs``: one-shot Optimal Brain Surgeon in the SparseGPT form. Each layer's inputs X are collected
  on calibration text by running the (already partly pruned) model in onnxruntime; with
  H = XᵀX / n + λI, weights are removed column block by column block, choosing within each block
  the entries (or blocks) with the smallest w² / [H⁻¹]ᵢᵢ², and the error of every removal is
  compensated by updating the remaining weights of the row through the Cholesky factor of H⁻¹. This
  reconstructs each layer's outputs on the calibration data much better than magnitude pruning.
  Layers are processed in graph order, a few at a time, each group calibrated on the outputs of the
  already-pruned layers before it.

Structures (on [K, N]): ``unstructured``; ``1xC`` (C consecutive output columns of one input row:
what sparsejit's block-sparse fp32 kernels use, e.g. 1x16, 1x32); ``Rx1`` (R consecutive inputs of
one output, e.g. 4x1 for int8 VNNI); or any ``RxC``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["LayerReport", "SparsifyReport", "find_prunable", "sparsify", "prune_magnitude", "prune_obs",
           "quantize_onnx", "read_labelled_csv", "evaluate_accuracy", "encode_texts", "parse_structure"]

METHODS = ("magnitude", "obs")
SCOPES = ("per_layer", "global")
DEFAULT_SKIP = ("embeddings", "heads")
_NORMALISERS = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                "RMSNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization"}


# ------------------------------------------------------------------------------------------- reports


@dataclass
class LayerReport:
    """One pruned (or skipped) weight."""

    name: str
    node: str
    shape: tuple[int, int]  # [K, N]
    sparsity_before: float
    sparsity_after: float
    skipped: str = ""  # why it was left dense ("" when pruned)
    error: float | None = None  # relative output reconstruction error on calibration data (obs)


@dataclass
class SparsifyReport:
    """What `sparsify` did: per-layer sparsity, overall sparsity, accuracy before / after."""

    output: Path
    layers: list[LayerReport] = field(default_factory=list)
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    quantized: Path | None = None

    @property
    def overall_sparsity(self) -> float:
        """Sparsity over the pruned weights."""
        pruned = [r for r in self.layers if not r.skipped]
        total = sum(r.shape[0] * r.shape[1] for r in pruned)
        return sum(r.sparsity_after * r.shape[0] * r.shape[1] for r in pruned) / max(1, total)

    def format(self) -> str:
        lines = [f"{'weight':<40} {'node':<44} {'shape':>11} {'before':>7} {'after':>7}"]
        for r in self.layers:
            tail = f"  (kept dense: {r.skipped})" if r.skipped else ""
            if r.error is not None:
                tail += f"  rel. output error {r.error:.4f}"
            lines.append(f"{r.name[-40:]:<40} {r.node[-44:]:<44} {r.shape[0]:>5}x{r.shape[1]:<5} "
                         f"{r.sparsity_before:7.3f} {r.sparsity_after:7.3f}{tail}")
        lines.append(f"overall sparsity of pruned weights: {self.overall_sparsity:.4f}")
        if self.accuracy_before is not None and self.accuracy_after is not None:
            lines.append(f"accuracy: {self.accuracy_before:.4f} -> {self.accuracy_after:.4f} "
                         f"({self.accuracy_after - self.accuracy_before:+.4f})")
        lines.append(f"written: {self.output}" + (f" (int8: {self.quantized})" if self.quantized else ""))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------- graph analysis


@dataclass
class Prunable:
    """A constant weight used as x @ W (MatMul) or by Gemm; `transposed` when stored as [N, K]."""

    name: str
    node: str
    input: str  # the activation input (x)
    transposed: bool
    order: int  # index of the (first) node using it

    def kn(self, inits: dict[str, np.ndarray]) -> np.ndarray:
        w = inits[self.name]
        return w.T if self.transposed else w


def _head_outputs(model: onnx.ModelProto) -> set[str]:
    """Tensors from which a graph output is reachable without passing a normalisation."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {o: n for n in graph.node for o in n.output}

    def normaliser(node: onnx.NodeProto) -> bool:
        if node.op_type in _NORMALISERS:
            return True
        if node.op_type == "Sub" and len(node.input) == 2:  # (x - ReduceMean(x)) of a decomposed LN
            prod = producers.get(node.input[1])
            return prod is not None and prod.op_type == "ReduceMean" and prod.input[0] == node.input[0]
        return False

    free = {o.name for o in graph.output}
    for node in reversed(graph.node):
        if normaliser(node):
            continue
        if any(o in free for o in node.output):
            free.update(node.input)
    return free


def find_prunable(model: onnx.ModelProto, skip: Iterable[str] | None = None) -> tuple[list[Prunable],
                                                                                        dict[str, str]]:
    """Prunable weights in graph order, and the skipped ones with the reason.

    `skip`: ``"embeddings"``, ``"heads"`` and/or regular expressions matched against weight and node
    names (default: embeddings and heads).
    """
    skip = list(DEFAULT_SKIP if skip is None else skip)
    patterns = [re.compile(p) for p in skip if p not in DEFAULT_SKIP]
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather"}
    heads = _head_outputs(model) if "heads" in skip else set()
    found: dict[str, Prunable] = {}
    skipped: dict[str, str] = {}
    for i, node in enumerate(graph.node):
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        t = inits[node.input[1]]
        if len(t.dims) != 2 or t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            continue
        name = node.input[1]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            continue
        transposed = node.op_type == "Gemm" and bool(attrs.get("transB", 0))
        reason = ""
        if "embeddings" in skip and name in gathered:
            reason = "embedding"
        elif any(o in heads for o in node.output):
            reason = "head"
        elif any(p.search(name) or p.search(node.name) for p in patterns):
            reason = "skip pattern"
        if reason:
            skipped.setdefault(name, reason)
            continue
        if name in found:
            if found[name].transposed != transposed:
                skipped[name] = "used in two orientations"
            continue
        found[name] = Prunable(name, node.name or node.output[0], node.input[0], transposed, i)
    for name in skipped:
        found.pop(name, None)
    return sorted(found.values(), key=lambda p: p.order), skipped


# --------------------------------------------------------------------------------------------- masks


def parse_structure(structure: str) -> tuple[int, int]:
    """``"unstructured"`` -> (1, 1); ``"1x16"`` -> (1, 16): (rows along K, columns along N)."""
    if structure == "unstructured":
        return 1, 1
    m = re.fullmatch(r"(\d+)x(\d+)", structure.strip().lower())
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"structure must be 'unstructured' or like '1x16' / '4x1', got {structure!r}")
    return int(m.group(1)), int(m.group(2))


def _block_scores(w: np.ndarray, r: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean square per r x c block, element count per block) of a [K, N] weight (edges padded)."""
    k, n = w.shape
    kb, nb = -(-k // r), -(-n // c)
    sq = np.zeros((kb * r, nb * c))
    sq[:k, :n] = np.square(w, dtype=np.float64)
    cnt = np.zeros((kb * r, nb * c))
    cnt[:k, :n] = 1.0
    sums = sq.reshape(kb, r, nb, c).sum(axis=(1, 3))
    counts = cnt.reshape(kb, r, nb, c).sum(axis=(1, 3))
    return sums / counts, counts


def _expand(block_mask: np.ndarray, r: int, c: int, shape: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(block_mask, r, axis=0), c, axis=1)[: shape[0], : shape[1]]


def _lowest(scores: np.ndarray, counts: np.ndarray, target: float) -> np.ndarray:
    """Boolean mask (True = prune) of the lowest-scoring blocks covering `target` of the elements."""
    flat_s, flat_c = scores.reshape(-1), counts.reshape(-1)
    order = np.argsort(flat_s, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(flat_c[order])])
    n_prune = int(np.argmin(np.abs(cum - target * cum[-1])))  # element count closest to the target
    mask = np.zeros(flat_s.size, dtype=bool)
    mask[order[:n_prune]] = True
    return mask.reshape(scores.shape)


def prune_magnitude(weights: Sequence[np.ndarray], sparsity: float, structure: str = "unstructured",
                    scope: str = "per_layer") -> list[np.ndarray]:
    """Magnitude-prune [K, N] weights: the blocks of smallest mean square, per layer or globally."""
    _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    r, c = parse_structure(structure)
    scored = [_block_scores(w, r, c) for w in weights]
    if scope == "per_layer":
        masks = [_lowest(s, n, sparsity) for s, n in scored]
    else:
        all_s = np.concatenate([s.reshape(-1) for s, _ in scored])
        all_n = np.concatenate([n.reshape(-1) for _, n in scored])
        flat = _lowest(all_s, all_n, sparsity)
        masks, start = [], 0
        for s, _ in scored:
            masks.append(flat[start:start + s.size].reshape(s.shape))
            start += s.size
    out = []
    for w, m in zip(weights, masks, strict=True):
        pruned = np.array(w, copy=True)
        pruned[_expand(m, r, c, w.shape)] = 0
        out.append(pruned)
    return out


def _global_targets(weights: Sequence[np.ndarray], sparsity: float, r: int, c: int) -> list[float]:
    """Per-layer sparsities that a global magnitude threshold would give (used by global OBS)."""
    pruned = prune_magnitude(weights, sparsity, f"{r}x{c}", "global")
    return [1.0 - np.count_nonzero(p) / p.size for p in pruned]


def obs_factor(hessian: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(U, dead) for `prune_obs`: U upper-triangular with (H + λI)⁻¹ = Uᵀ U; `dead` inputs never seen."""
    h = np.array(hessian, dtype=np.float64, copy=True)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices(h.shape[0])] += damp * float(np.mean(np.diag(h)))
    return _upper_cholesky_of_inverse(h), dead


def prune_obs(w: np.ndarray, hessian: np.ndarray | None, sparsity: float, structure: str = "unstructured",
              block_size: int = 128, damp: float = 0.01,
              factor: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """SparseGPT / OBS pruning of one [K, N] weight given H = XᵀX / n of its inputs ([K, K]).

    `factor` (from `obs_factor`) may be given instead of `hessian` to share it between the layers
    reading the same input. Returns the pruned, error-compensated weight (float32, same shape).
    """
    _check_sparsity(sparsity)
    r, c = parse_structure(structure)
    k, n = w.shape
    if factor is None:
        if hessian is None:
            raise ValueError("give hessian or factor")
        factor = obs_factor(hessian, damp)
    hinv, dead = factor
    wt = np.array(w, dtype=np.float64).T.copy()  # [N rows (outputs), K columns (inputs)]
    wt[:, dead] = 0.0
    bs = max(r, (block_size // r) * r)
    n_pad = -(-n // c) * c
    for i1 in range(0, k, bs):
        i2 = min(i1 + bs, k)
        cnt = i2 - i1
        w1 = wt[:, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = np.diag(hinv1)
        score = np.zeros((n_pad, -(-cnt // r) * r))
        score[:n, :cnt] = w1 ** 2 / d[None, :] ** 2
        cntm = np.zeros_like(score)
        cntm[:n, :cnt] = 1.0
        g = score.reshape(n_pad // c, c, -1, r).sum(axis=(1, 3))
        gc = cntm.reshape(n_pad // c, c, -1, r).sum(axis=(1, 3))
        valid = gc > 0
        gmask = _lowest(np.where(valid, g / np.maximum(gc, 1), np.inf), gc, sparsity)
        mask1 = np.repeat(np.repeat(gmask, c, axis=0), r, axis=1)[:n, :cnt]
        for i in range(cnt):
            col = w1[:, i]
            q = np.where(mask1[:, i], 0.0, col)
            q1[:, i] = q
            e = (col - q) / d[i]
            w1[:, i:] -= np.outer(e, hinv1[i, i:])
            err1[:, i] = e
        wt[:, i1:i2] = q1
        if i2 < k:
            wt[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return np.ascontiguousarray(wt.T, dtype=np.float32)


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """Upper-triangular U with H⁻¹ = Uᵀ U (adding damping until H is positive definite)."""
    extra = 0.0
    mean_diag = float(np.mean(np.diag(h)))
    for _ in range(8):
        try:
            hh = h + extra * np.eye(h.shape[0])
            lower = np.linalg.cholesky(hh)
            inv_l = np.linalg.inv(lower)
            hinv = inv_l.T @ inv_l
            return np.linalg.cholesky(hinv).T
        except np.linalg.LinAlgError:
            extra = max(extra * 10, 1e-4 * mean_diag + 1e-8)
    raise np.linalg.LinAlgError("Hessian is not positive definite even after damping")


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


# ------------------------------------------------------------------------------------ model running


@dataclass
class TextBatches:
    """Tokenised texts as padded int64 feeds for a model, in batches."""

    feeds: list[dict[str, np.ndarray]]

    def masks(self) -> list[np.ndarray]:
        return [f["attention_mask"] if "attention_mask" in f else np.ones_like(f["input_ids"])
                for f in self.feeds]


def _model_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def encode_texts(texts: Sequence[str], tokenizer: Any, input_names: Sequence[str], max_length: int = 128,
                 batch_size: int = 16, pad_id: int = 0) -> TextBatches:
    """Tokenise `texts` with a `tokenizers.Tokenizer` into padded feeds for `input_names`."""
    tokenizer.enable_truncation(max_length)
    feeds = []
    for start in range(0, len(texts), batch_size):
        encs = [(e.ids, e.attention_mask, e.type_ids)
                for e in tokenizer.encode_batch(list(texts[start:start + batch_size]))]
        length = max(len(e[0]) for e in encs)
        arrays = {"input_ids": np.full((len(encs), length), pad_id, np.int64),
                  "attention_mask": np.zeros((len(encs), length), np.int64),
                  "token_type_ids": np.zeros((len(encs), length), np.int64)}
        for b, (ids, mask, types) in enumerate(encs):
            arrays["input_ids"][b, :len(ids)] = ids
            arrays["attention_mask"][b, :len(ids)] = mask
            arrays["token_type_ids"][b, :len(ids)] = types
        feed = {}
        for name in input_names:
            if name == "position_ids":
                feed[name] = np.broadcast_to(np.arange(length, dtype=np.int64), (len(encs), length)).copy()
            elif name in arrays:
                feed[name] = arrays[name]
            else:
                raise ValueError(f"cannot fill model input {name!r} from a tokenizer")
        feeds.append(feed)
    return TextBatches(feeds)


def _random_batches(input_names: Sequence[str], vocab: int, n: int, length: int = 64,
                    batch_size: int = 16) -> TextBatches:
    rng = np.random.default_rng(0)
    feeds = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        arrays = {"input_ids": rng.integers(5, vocab, (b, length), dtype=np.int64),
                  "attention_mask": np.ones((b, length), np.int64),
                  "token_type_ids": np.zeros((b, length), np.int64),
                  "position_ids": np.broadcast_to(np.arange(length, dtype=np.int64), (b, length)).copy()}
        feeds.append({name: arrays[name] for name in input_names})
    return TextBatches(feeds)


def _session(model: onnx.ModelProto, extra_outputs: Sequence[str] = (), threads: int | None = None) -> Any:
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in extra_outputs:
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _collect_hessians(model: onnx.ModelProto, inputs: Sequence[str], data: TextBatches) -> dict[str, Any]:
    """H = XᵀX / n (float64) of each named activation over the real (unpadded) tokens of `data`."""
    sess = _session(model, inputs)
    hs: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(inputs, 0)
    for feed, mask in zip(data.feeds, data.masks(), strict=True):
        outs = sess.run(list(inputs), feed)
        for name, x in zip(inputs, outs, strict=True):
            x = np.asarray(x, dtype=np.float32)
            if x.ndim == 3 and x.shape[:2] == mask.shape:
                x = x[mask.astype(bool)]
            x = x.reshape(-1, x.shape[-1])
            h = (x.T @ x).astype(np.float64)  # float32 products, float64 running sum
            hs[name] = hs[name] + h if name in hs else h
            counts[name] += x.shape[0]
    return {name: hs[name] / max(1, counts[name]) for name in inputs}


# --------------------------------------------------------------------------------------- accuracy


def read_labelled_csv(path: str | os.PathLike, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(texts, labels) from a CSV with a header naming `text` and `label` columns (any order)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "text" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise ValueError(f"{path}: expected a header with 'text' and 'label' columns, got "
                             f"{reader.fieldnames}")
        texts, labels = [], []
        for row in reader:
            texts.append(row["text"])
            labels.append(row["label"].strip())
            if limit is not None and len(texts) >= limit:
                break
    return texts, labels


def evaluate_accuracy(model: onnx.ModelProto | str | os.PathLike, data: TextBatches, labels: Sequence[str],
                      id2label: dict[int, str] | None = None) -> float:
    """Fraction of rows whose argmax logit (first output) names the label (or its index)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    sess = _session(proto)
    preds: list[int] = []
    out_name = sess.get_outputs()[0].name
    for feed in data.feeds:
        logits = sess.run([out_name], feed)[0]
        preds.extend(int(i) for i in np.argmax(logits.reshape(logits.shape[0], -1), axis=-1))
    names = id2label or {}
    hits = 0
    for p, label in zip(preds, labels, strict=True):
        hits += label == names.get(p, str(p)) or label == str(p)
    return hits / max(1, len(labels))


# -------------------------------------------------------------------------------------------- main


def _resolve_io(model_in: str | os.PathLike, model_out: str | os.PathLike) -> tuple[Path, Path, Path, Path]:
    """(input .onnx, input dir, output .onnx, output dir); never the same file."""
    src = Path(model_in)
    src_file = src / "model.onnx" if src.is_dir() else src
    if not src_file.is_file():
        raise FileNotFoundError(f"no ONNX model at {src}")
    dst = Path(model_out)
    dst_file = dst if dst.suffix == ".onnx" else dst / "model.onnx"
    if dst_file.resolve() == src_file.resolve() or (dst_file.exists() and dst_file.samefile(src_file)):
        raise ValueError(f"refusing to overwrite the input model {src_file}")
    return src_file, src_file.parent, dst_file, dst_file.parent


def _load_tokenizer(tokenizer: Any, src_dir: Path) -> tuple[Any, int]:
    from sparsejit.tasks.base import load_tokenizer, pad_token_id

    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer) if tokenizer is not None else src_dir / "tokenizer.json"
        if not path.exists():
            return None, 0
        tokenizer = load_tokenizer(path)
        path = path / "tokenizer.json" if path.is_dir() else path
        config = _read_config(path.parent)
        return tokenizer, pad_token_id(tokenizer, config, path)
    return tokenizer, int(tokenizer.token_to_id("[PAD]") or 0)


def _read_config(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def sparsify(model_in: str | os.PathLike, model_out: str | os.PathLike, sparsity: float = 0.9,
             method: str = "magnitude", structure: str = "unstructured", scope: str = "per_layer",
             calibration_texts: Sequence[str] | None = None, tokenizer: Any = None,
             skip: Iterable[str] | None = None, quantize: bool | str = False,
             eval_csv: str | os.PathLike | None = None, eval_limit: int | None = None,
             num_calibration: int = 256, max_length: int = 128, layers_per_pass: int = 4,
             block_size: int = 128, damp: float = 0.01,
             progress: Callable[[str], None] | None = None) -> SparsifyReport:
    """Prune `model_in` (an .onnx file or a directory with model.onnx) and write `model_out`.

    `model_out` is an .onnx path, or a directory (then the input directory's tokenizer / config files
    are copied next to the new model.onnx). `skip`: see `find_prunable`. `method="obs"` calibrates on
    `calibration_texts` (tokenised with `tokenizer`, default the model's tokenizer.json; random tokens
    when none are given), `layers_per_pass` weights groups (layers sharing an input) per onnxruntime
    pass. `eval_csv` (text,label) reports accuracy before and after. `quantize`: True / "dynamic" /
    "static" for int8 afterwards with onnxruntime.quantization (static calibrates on the texts);
    the int8 model goes to `model_out` and the fp32 pruned one to ``<stem>.fp32.onnx`` next to it.
    """
    _check_sparsity(sparsity)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    r, c = parse_structure(structure)
    say = progress or (lambda msg: None)
    src_file, src_dir, dst_file, dst_dir = _resolve_io(model_in, model_out)
    model = onnx.load(str(src_file))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    prunable, skipped = find_prunable(model, skip)
    if not prunable:
        raise ValueError("no prunable MatMul / Gemm weights found (all skipped?)")
    report = SparsifyReport(output=dst_file)
    before = {p.name: 1.0 - np.count_nonzero(inits[p.name]) / inits[p.name].size for p in prunable}
    input_names = _model_inputs(model)
    tok, pad_id = _load_tokenizer(tokenizer, src_dir)
    id2label = {int(k): v for k, v in (_read_config(src_dir).get("id2label") or {}).items()}

    eval_data = labels = None
    if eval_csv is not None:
        if tok is None:
            raise ValueError("eval_csv needs a tokenizer (tokenizer.json next to the model, or tokenizer=)")
        texts, labels = read_labelled_csv(eval_csv, eval_limit)
        eval_data = encode_texts(texts, tok, input_names, max_length, pad_id=pad_id)
        say(f"evaluating the dense model on {len(texts)} rows")
        report.accuracy_before = evaluate_accuracy(model, eval_data, labels, id2label)

    kn = [p.kn(inits) for p in prunable]
    targets = [sparsity] * len(prunable)
    if scope == "global":
        targets = _global_targets(kn, sparsity, r, c)
    errors: dict[str, float] = {}
    if method == "magnitude":
        if scope == "global":
            new = prune_magnitude(kn, sparsity, structure, "global")
        else:
            new = prune_magnitude(kn, sparsity, structure, "per_layer")
        for p, w in zip(prunable, new, strict=True):
            _set_weight(model, inits, p, w)
    else:
        calib = _calibration(calibration_texts, tok, input_names, inits, num_calibration, max_length, pad_id)
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prunable):
            groups.setdefault(p.input, []).append(i)
        group_list = list(groups.items())
        for g0 in range(0, len(group_list), max(1, layers_per_pass)):
            chunk = group_list[g0:g0 + max(1, layers_per_pass)]
            say(f"calibrating layers {g0 + 1}-{g0 + len(chunk)} of {len(group_list)} input groups")
            hs = _collect_hessians(model, [name for name, _ in chunk], calib)
            for name, idxs in chunk:
                factor = obs_factor(hs[name], damp)
                for i in idxs:
                    p = prunable[i]
                    w = p.kn(inits)
                    pruned = prune_obs(w, None, targets[i], structure, block_size, damp, factor=factor)
                    errors[p.name] = _relative_error(w, pruned, hs[name])
                    _set_weight(model, inits, p, pruned)

    for p in prunable:
        w = inits[p.name]
        report.layers.append(LayerReport(p.name, p.node, tuple(p.kn(inits).shape), before[p.name],
                                         1.0 - np.count_nonzero(w) / w.size, error=errors.get(p.name)))
    for name, reason in skipped.items():
        w = inits[name]
        if w.ndim == 2:
            report.layers.append(LayerReport(name, "", (int(w.shape[0]), int(w.shape[1])),
                                             1.0 - np.count_nonzero(w) / w.size,
                                             1.0 - np.count_nonzero(w) / w.size, skipped=reason))

    dst_dir.mkdir(parents=True, exist_ok=True)
    if dst_file.parent != src_file.parent and Path(model_out).suffix != ".onnx":
        for f in src_dir.iterdir():
            if f.is_file() and f.suffix != ".onnx" and f.name != "zoo.json" and not (dst_dir / f.name).exists():
                shutil.copy2(f, dst_dir / f.name)
    fp32_file = dst_file
    if quantize:
        fp32_file = dst_file.with_name(dst_file.stem + ".fp32.onnx")
    _save(model, fp32_file)
    if quantize:
        mode = "static" if quantize == "static" or (quantize is True and calibration_texts) else "dynamic"
        say(f"quantising to int8 ({mode})")
        calib = None
        if mode == "static":  # one text per batch: padding (and the mask's -3.4e38) must not enter the ranges
            calib = _calibration(calibration_texts, tok, input_names, inits, num_calibration, max_length, pad_id,
                                 batch_size=1)
        quantize_onnx(fp32_file, dst_file, mode, calib)
        report.quantized = dst_file
    if eval_data is not None and labels is not None:
        say("evaluating the pruned model")
        report.accuracy_after = evaluate_accuracy(str(dst_file), eval_data, labels, id2label)
    return report


def _calibration(texts: Sequence[str] | None, tok: Any, input_names: Sequence[str],
                 inits: dict[str, np.ndarray], limit: int, max_length: int, pad_id: int,
                 batch_size: int = 16) -> TextBatches:
    if texts:
        if tok is None:
            raise ValueError("calibration texts need a tokenizer (tokenizer.json next to the model, "
                             "or tokenizer=)")
        return encode_texts(list(texts)[:limit], tok, input_names, max_length, batch_size, pad_id=pad_id)
    warnings.warn("no calibration texts given: calibrating on random token ids (worse than real text)",
                  stacklevel=3)
    vocab = tok.get_vocab_size() if tok is not None else 0
    if not vocab:  # the largest Gather table is the word embedding
        vocab = max((w.shape[0] for w in inits.values() if w.ndim == 2), default=1000)
    return _random_batches(input_names, vocab, min(limit, 64))


def _relative_error(w: np.ndarray, pruned: np.ndarray, h: np.ndarray) -> float:
    """||X (W - Wp)||² / ||X W||² on the calibration inputs (through H = XᵀX / n)."""
    w64 = np.asarray(w, np.float64)
    d = w64 - pruned
    num = float(np.sum(d * (h @ d)))
    den = float(np.sum(w64 * (h @ w64)))
    return num / max(den, 1e-30)


def _set_weight(model: onnx.ModelProto, inits: dict[str, np.ndarray], p: Prunable, w_kn: np.ndarray) -> None:
    """Replace initializer `p.name` by the [K, N] weight `w_kn` (stored in its original orientation)."""
    old = inits[p.name]
    stored = np.ascontiguousarray(w_kn.T if p.transposed else w_kn).astype(old.dtype)
    inits[p.name] = stored
    for i, t in enumerate(model.graph.initializer):
        if t.name == p.name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(stored, p.name))
            return
    raise KeyError(p.name)


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > 1_900_000_000:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, str(path))


def quantize_onnx(src: Path, dst: Path, mode: str, calib: TextBatches | None) -> None:
    """int8 with onnxruntime.quantization: "dynamic" (s8 weights), or "static" QDQ per-channel calibrated
    on `calib` (u8 activations, s8 weights: zero weights stay exactly zero in both)."""
    try:
        from onnxruntime import quantization as q
    except ImportError as exc:
        raise RuntimeError("int8 quantisation needs onnxruntime (pip install onnxruntime)") from exc
    if mode == "dynamic":
        q.quantize_dynamic(str(src), str(dst), weight_type=q.QuantType.QInt8)
        return
    assert calib is not None

    class _Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib.feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    q.quantize_static(str(src), str(dst), _Reader(), quant_format=q.QuantFormat.QDQ,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      per_channel=True)
