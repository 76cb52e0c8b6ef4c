"""Differential fuzzing: random valid ONNX graphs compiled by sparsejit and run by onnxruntime on the same
inputs must agree, output by output (the generator and runner are in tests/fuzz_graphs.py).

One test per seed of the QUICK profile (compiled with `input_shapes=`), and of the BUCKETED profile
(compiled with `batch_size=` and two `sequence_length` buckets, run at four (batch, seq) sizes that the
engine pads into them: graphs whose ops never mix sequence positions or batch rows, plus attention
with a padded mask and first-token pooling, so padding cannot change the valid part of any output).
A failure is named by its seed; reproduce one with `python -m bench.fuzz_compiler --profile quick
--seed <seed> --cases 1 --save-dir /tmp/fuzz` (which also saves the model and its feeds), and run many
more with the FULL profile the same way. SPARSEJIT_FUZZ_CASES / SPARSEJIT_FUZZ_BUCKETED_CASES change
how many seeds run.

QUICK keeps a small palette of widths, scalar constants and elementwise ops, because the cost of a
cold run is kernel compilation (one generated kernel per distinct elementwise expression x rank x
broadcast pattern, one GEMM per weight shape x activation) while the topology, which is where fusion
passes and the memory planner break, stays fully random at no compile cost.

Each case runs at least twice, on different feeds: later runs catch state left in the plan's reused
buffers by earlier ones. Inputs must come back unmodified.

Tolerances (`fuzz_graphs.compare`):
- float32 outputs: |sparsejit - onnxruntime| <= 1e-5 + 1e-4 * scale, where scale = max(max |reference|,
  the largest magnitude the generator expects on the value's way there). An output smaller than the
  values it was computed from (a Tanh, Softmax or LayerNorm of large values, a difference) carries
  their rounding error, not its own. 1e-4 is ~1000 float32 ulps: summation order (GEMM tiles,
  reductions), FMA contraction and sparsejit's float32 erf / tanh approximations (|error| ~ 1e-7)
  differ from onnxruntime by a few ulps per op; real bugs (a wrong element, axis, broadcast or stale
  buffer) are off by O(scale).
- integer and bool outputs (ArgMax/ArgMin, Cast to int, comparisons, int64 Div/Mod): exactly equal.
  Discontinuous ops are only ever applied to values both engines hold bit-identically (graph inputs,
  constants, data movement, Relu/Abs/Neg/Max/Min/Clip/Where of them), so a last-bit difference in
  float arithmetic can never flip them.
- int8 paths (QuantizeLinear/DequantizeLinear around MatMuls, u8 and s8 activations; DynamicQuantizeLinear
  + MatMulInteger + Cast + Mul): the integer products are exact in both engines (int32 accumulation),
  and the quantised activations are bit-identical, because QUICK only quantises bit-identical values
  (as above) and random normal float32 inputs never land on a rounding tie (x / scale exactly k + 0.5;
  both engines round half to even even then). What differs is float: the dequantisation scale
  product and bias add (a rounding or two, FMA allowed), within the float32 tolerance above.
  QLinearMatMul (BUCKETED, FULL) requantises with one multiply in both engines, so its 8-bit output is
  the same too and the dequantised result is held to the float tolerance (a one-step difference
  would be ~1 % of the scale). FULL (bench only) also quantises computed values, where a last-bit
  difference can flip one quantisation step; outputs downstream of such a quantiser are held to
  2e-2 * scale instead (`LOOSE_RTOL`).

Failures of other kinds: an `UnsupportedOperatorError` means the generator made an op or form the
compiler does not claim (a generator bug, fixed there); onnxruntime refusing a model is a generator bug
too; any other exception at compile or run time is a compiler failure. Bugs already found are
regression tests in tests/test_fuzz_regressions.py, and the generator avoids the open ones
(`fuzz_graphs.KNOWN_BUGS`) so that these seeds keep testing everything else.
"""

from __future__ import annotations

import collections
import os

import pytest

from tests import fuzz_graphs as fg

pytest.importorskip("onnxruntime")

# Cold kernel cache, one core: ~2.7 min for both (kernel compilation; ~5 s with a warm cache).
N_CASES = int(os.environ.get("SPARSEJIT_FUZZ_CASES", "180"))
N_BUCKETED = int(os.environ.get("SPARSEJIT_FUZZ_BUCKETED_CASES", "40"))
SEEDS = range(N_CASES)

# What the default run must contain over its seeds (checked without compiling anything).
REQUIRED_OPS = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Clip", "Cast", "Relu", "Tanh", "Erf", "Sqrt",
    "MatMul", "Gemm", "LayerNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "Softmax", "Transpose",
    "Reshape", "Concat", "Slice", "Gather", "Unsqueeze", "Squeeze", "Expand", "Split",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
}
REQUIRED_PATTERNS = {
    "dual_product_add", "add_two_layernorms", "residual_is_output", "residual_output", "output_and_consumed",
    "layernorm_spelled", "act_gelu_erf", "act_gelu_tanh", "act_relu", "attention", "qdq_u8", "qdq_s8",
    "dynamic_s8", "matmul_a_bt", "gemm", "wide_4095", "slice_edge", "embedding",
}


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_case_matches_onnxruntime(seed: int) -> None:
    outcome = fg.run_case(fg.generate(seed, fg.QUICK))
    assert outcome.ok, outcome.report()


@pytest.mark.parametrize("seed", range(N_BUCKETED))
def test_fuzz_bucketed_case_matches_onnxruntime(seed: int) -> None:
    """The batch x sequence engine: buckets, padding, output axes found from names or by probing, slicing."""
    outcome = fg.run_case(fg.generate(seed, fg.BUCKETED))
    assert outcome.ok, outcome.report()


def test_generator_is_deterministic() -> None:
    for seed in (0, 7, 123):
        a, b = fg.generate(seed, fg.QUICK), fg.generate(seed, fg.QUICK)
        assert a.model.SerializeToString() == b.model.SerializeToString()
        for fa, fb in zip(a.feeds, b.feeds, strict=True):
            assert fa.keys() == fb.keys() and all((fa[k] == fb[k]).all() for k in fa)


def test_default_seeds_cover_the_claimed_operators_and_patterns() -> None:
    ops: collections.Counter = collections.Counter()
    patterns: collections.Counter = collections.Counter()
    for seed in range(180):  # the default seeds, whatever SPARSEJIT_FUZZ_CASES says
        case = fg.generate(seed, fg.QUICK)
        ops.update(case.ops)
        patterns.update(case.patterns)
    assert REQUIRED_OPS <= set(ops), sorted(REQUIRED_OPS - set(ops))
    assert REQUIRED_PATTERNS <= set(patterns), sorted(REQUIRED_PATTERNS - set(patterns))
