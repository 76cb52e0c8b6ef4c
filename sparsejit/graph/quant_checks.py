"""Checks of a quantised model's calibration that warn the user instead of failing.

`quantize_static` calibrated on padded batches puts the attention mask's -3.4e38 into the range of the
scores it adds to: the QuantizeLinear there gets a scale near 1e36 and every real score rounds to 0,
so the model's attention is uniform and its outputs are noise, in onnxruntime, OpenVINO and sparsejit
alike. Nothing is wrong with the file's structure, so it compiles; `warn_on_degenerate_scales` names
the nodes.
"""

from __future__ import annotations

import warnings

from sparsejit.errors import QuantizationRangeWarning
from sparsejit.graph.ir import Graph
from sparsejit.graph.rewrite import scalar_constant

DEGENERATE_SCALE = 1e20  # real activations' scales are below 1e3; a mask's float32 minimum gives ~1e36


def degenerate_quantizers(graph: Graph) -> list[tuple[str, float]]:
    """(node name, scale) of every QuantizeLinear whose per-tensor scale is at least `DEGENERATE_SCALE`."""
    found = []
    for node in graph.nodes:
        if node.op_type != "QuantizeLinear" or node.domain or len(node.inputs) < 2:
            continue
        scale = scalar_constant(graph, node.inputs[1])
        if scale is not None and abs(float(scale)) >= DEGENERATE_SCALE:
            found.append((node.name or node.outputs[0], float(scale)))
    return found


def warn_on_degenerate_scales(graph: Graph) -> None:
    """Warn (`QuantizationRangeWarning`) about the quantizers `degenerate_quantizers` finds."""
    found = degenerate_quantizers(graph)
    if not found:
        return
    names = ", ".join(f"{name!r} (scale {scale:.3g})" for name, scale in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    warnings.warn(QuantizationRangeWarning(
        f"{len(found)} QuantizeLinear node(s) have a scale so large that every ordinary value rounds to 0: "
        f"{names}{more}. The calibration range probably included an attention mask's -3.4e38 or -inf (calibrating on "
        "padded batches does this): the model's outputs carry no information in any engine. Re-quantise "
        "calibrating on unpadded inputs, or exclude those nodes (quantize_static(..., nodes_to_exclude=[...]))."),
        stacklevel=3)
