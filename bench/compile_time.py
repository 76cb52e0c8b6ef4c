"""Cold and warm compile time of BERT-base in every model form users bring, and the number of distinct
generated kernels each needs.

Forms (all from the zoo's random full-size BERT-base, made with onnxruntime.quantization's *default*
options unless named, i.e. every op type it quantises, the way users call it):

- ``fp32``: the exported file.
- ``dynamic``: ``quantize_dynamic(src, dst)``.
- ``qdq``: ``quantize_static(..., quant_format=QDQ)`` per tensor; ``qdq-pc``: the same, ``per_channel=True``.
- ``qop``: ``quantize_static(..., quant_format=QOperator)``.
- ``sparse-int8``: 90 % 4x16-block magnitude pruning by ``sparsejit.sparsify`` then ``quantize_dynamic``.
- Optimum's presets, sentence-transformers' dynamic export and NNCF: see ``tests/int8_exporters.py``
  (``--forms optimum-vnni-dynamic,optimum-vnni-static,optimum-avx2-dynamic,optimum-avx2-static,st-dynamic,nncf``).

Each compile (batch 1, sequence 128) runs in a fresh process: cold on an empty kernel cache, then warm on
the cache the cold run filled. "kernels" counts the generated kernel modules the cold run wrote.

    python -m bench.compile_time                     # every form
    python -m bench.compile_time --forms qdq-pc,fp32
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMS = ("fp32", "dynamic", "qdq", "qdq-pc", "qop", "sparse-int8")
_COMPILE = """
import sys, time
t = time.perf_counter()
import sparsejit
sparsejit.compile(sys.argv[1], batch_size=1, sequence_length=128)
print(time.perf_counter() - t)
"""


def model_for(form: str) -> Path:
    """The BERT-base file of `form` (built once, cached beside the zoo models; forms of
    `tests.int8_exporters` plus ``fp32``, ``sparse-int8`` (90 % pruned in 4x16 blocks, `quantize_dynamic`)
    and ``sparse-qdq`` (the same pruned model, `quantize_static` with its defaults))."""
    from bench.bench_sparse import pruned_bert
    from tests import zoo
    from tests.int8_exporters import quantize_as

    base = zoo.random_encoder("bert-base")
    if form == "fp32":
        return base / "model.onnx"
    if form == "sparse-int8":
        return pruned_bert("4x16+int8", 0.9)
    pruned = form == "sparse-qdq"
    if pruned:
        form = "qdq"

    def build(d: Path) -> dict[str, Any]:
        # unpadded: a padded batch puts the attention mask's -inf into the calibrated ranges
        feeds = [zoo.make_inputs(base, 4, 128, seed=100 + i, padded=False) for i in range(4)]
        quantize_as(form, pruned_bert("4x16", 0.9) if pruned else base / "model.onnx", d / "model.onnx", feeds)
        return {}

    name = f"defaults-{form}-bert-base" + ("-4x16-90" if pruned else "")
    params = {"form": form, "calibration": "unpadded", **({"pruned": "4x16-90"} if pruned else {})}
    return zoo._cached_build(name, params, build) / "model.onnx"


def _compile_seconds(model: Path, cache: str) -> float:
    env = dict(os.environ, SPARSEJIT_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", _COMPILE, str(model)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"compile of {model} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--forms", default=",".join(FORMS))
    args = parser.parse_args(argv)
    from llvmlite import binding

    print(f"BERT-base, batch 1 x sequence 128, CPU {binding.get_host_cpu_name()}, one fresh process per compile")
    print(f"{'form':<12} {'cold s':>8} {'warm s':>8} {'kernels':>8}")
    for form in args.forms.split(","):
        model = model_for(form)
        with tempfile.TemporaryDirectory() as cache:
            cold = _compile_seconds(model, cache)
            warm = _compile_seconds(model, cache)
            kernels = len(list(Path(cache).glob("kernels/*/sparsejit_gen_*.py")))
        print(f"{form:<12} {cold:>8.1f} {warm:>8.1f} {kernels:>8}", flush=True)


if __name__ == "__main__":
    main()
