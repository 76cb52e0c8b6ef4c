"""The int8 files users get from the common exporters, made from one fp32 ONNX file (tests and benches).

Forms:

- onnxruntime.quantization with its *default* options (every op type it quantises): ``dynamic``
  (``quantize_dynamic``), ``qdq`` / ``qdq-pc`` (``quantize_static`` QDQ per tensor / per channel), ``qop``
  (``quantize_static`` QOperator).
- Hugging Face Optimum's ``AutoQuantizationConfig`` presets as ``ORTQuantizer.quantize`` applies them:
  ``optimum-vnni-{dynamic,static}`` (``avx512_vnni``; ``avx512`` writes the same file), ``optimum-avx2-
  {dynamic,static}`` (``avx2``: u8 weights). Optimum itself pins transformers < 5 and cannot be installed
  beside this project's test extras, so its preset settings (u8 activations asymmetric, weights
  symmetric, per channel, MatMul and Add only; dynamic → QOperator IntegerOps, static → QDQ) are passed
  to the same onnxruntime.quantization calls ORTQuantizer makes.
- ``st-dynamic``: sentence-transformers' ``export_dynamic_quantized_onnx_model`` (Optimum's
  ``avx512_vnni`` preset, dynamic, ``per_channel=False``).
- ``nncf``: NNCF's post-training quantisation of the ONNX model (``nncf.quantize`` with
  ``model_type=TRANSFORMER``, as NNCF recommends for transformers); needs ``nncf``.

Static forms are calibrated on the `feeds` given (unpadded: a padded batch puts the attention mask's
-3.4e38 into the calibrated ranges).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

ORT_FORMS = ("dynamic", "qdq", "qdq-pc", "qop")
OPTIMUM_FORMS = ("optimum-vnni-dynamic", "optimum-vnni-static", "optimum-avx2-dynamic", "optimum-avx2-static",
                 "st-dynamic")
FORMS = ORT_FORMS + OPTIMUM_FORMS + ("nncf",)
STATIC = {"qdq", "qdq-pc", "qop", "optimum-vnni-static", "optimum-avx2-static", "nncf"}

_FULLY_CONNECTED = ["MatMul", "Add"]  # optimum's ORT_FULLY_CONNECTED_OPERATORS


def quantize_as(form: str, src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]] = ()) -> None:
    """Write the `form` int8 file of the fp32 model `src` to `dst` (see the module docstring)."""
    from onnxruntime import quantization as q

    src_s, dst_s = str(src), str(dst)
    if form in STATIC and not feeds:
        raise ValueError(f"form {form!r} is static: give calibration feeds")
    if form == "nncf":
        _nncf(src, dst, feeds)
    elif form == "dynamic":
        q.quantize_dynamic(src_s, dst_s)
    elif form in ("qdq", "qdq-pc", "qop"):
        fmt = q.QuantFormat.QOperator if form == "qop" else q.QuantFormat.QDQ
        q.quantize_static(src_s, dst_s, _reader(feeds), quant_format=fmt, per_channel=form == "qdq-pc")
    elif form in OPTIMUM_FORMS:
        weights = q.QuantType.QUInt8 if "avx2" in form else q.QuantType.QInt8
        options = {"WeightSymmetric": True, "ActivationSymmetric": False}
        per_channel = form != "st-dynamic"
        if form.endswith("static"):
            q.quantize_static(src_s, dst_s, _reader(feeds), quant_format=q.QuantFormat.QDQ,
                              op_types_to_quantize=_FULLY_CONNECTED, per_channel=per_channel,
                              activation_type=q.QuantType.QUInt8, weight_type=weights, extra_options=options)
        else:
            q.quantize_dynamic(src_s, dst_s, op_types_to_quantize=_FULLY_CONNECTED, per_channel=per_channel,
                               weight_type=weights, extra_options=options)
    else:
        raise ValueError(f"unknown form {form!r}; forms are {FORMS}")


def _reader(feeds: Sequence[dict[str, np.ndarray]]):  # noqa: ANN202 - onnxruntime's reader class
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(list(feeds))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    return Reader()


def _nncf(src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]]) -> None:
    import nncf
    import onnx

    model = onnx.load(str(src))
    quantized = nncf.quantize(model, nncf.Dataset(list(feeds)), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(feeds))
    onnx.save(quantized, str(dst))
