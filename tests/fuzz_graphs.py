"""Random valid ONNX graphs for differential testing of sparsejit against onnxruntime (test-only helper).

`generate(seed, profile)` builds one opset-17 model from a seeded `numpy.random.Generator`, with its
input feeds; `run_case(case)` compiles it with sparsejit, runs both engines on the same inputs and
compares (`compare`: the tolerances, reasoned in tests/test_fuzz_differential.py). Used by
tests/test_fuzz_differential.py (QUICK and BUCKETED, a few hundred seeds) and by
`python -m bench.fuzz_compiler` (FULL by default, any number of cases).

A graph is a random sequence of *motifs* over a pool of values (graph inputs first, then every value a
motif makes): elementwise ops (unary, binary with broadcasting, Where, Clip, Pow, Cast, variadic
Max/Min/Sum/Mean, long fused chains), matrix products (constant 2-D weights with bias / activation /
residual epilogues spelled as exporters do, two activations, Gemm), LayerNormalization and its
ReduceMean/Sub/Pow/Sqrt/Div spelling, Softmax, a BERT-style attention block (fp32, dynamic or QDQ int8
projections; three mask spellings), data movement (Transpose, Reshape, Concat, Slice, Gather,
Squeeze/Unsqueeze, Expand, Split, Flatten, Identity), reductions, ArgMax/ArgMin, CumSum, int64 index
arithmetic, and int8 forms: QDQ pairs around MatMuls (u8 / s8 activations, per-tensor or per-column
int8 / uint8 weights), quantize_dynamic's DynamicQuantizeLinear + MatMulInteger + Cast + Mul, QLinearMatMul.

Generation is biased toward what breaks graph compilers: values are picked with a preference for ones
that already have consumers (shared inputs, fan-out) while values inside a fusable pattern are left
alone (so patterns mostly stay whole and fuse); overlapping fusable patterns are made on purpose (two
MatMul + bias products into one Add, an Add feeding two layer norms, one quantised activation feeding
several products, tied weights, a weight used as data, repeated nodes); residuals that are graph
outputs, values both returned and consumed further, graph inputs and initializers returned as they
are, constant subgraphs; broadcasting with size-1 dimensions and rank differences, odd sizes (1, 3,
17, 100, and 4095 in one dimension), several outputs, ONNX edge semantics (Slice clamping with
INT64 extremes and negative steps, negative axes and indices, ties in ArgMax, zero-range quantisation).

Profiles. Compiling kernels dominates the cost of a case: sparsejit generates one elementwise kernel
per distinct expression x rank x broadcast pattern, and one GEMM per weight shape x activation. QUICK
therefore draws from a small palette of widths, scalar constants and elementwise ops and keeps ranks
<= 3 outside attention (topology stays fully random, which costs nothing to compile); FULL widens all
of them (random constants, widths 1 to 4095, every claimed elementwise op, inexact quantiser inputs).
BUCKETED compiles with `batch_size=` and two sequence buckets and runs at four (batch, seq) sizes the
engine pads: every value keeps its [batch, seq] leading axes and no op mixes positions (but attention,
whose padded keys the mask removes, and first-token pooling), so padding never reaches a valid output.

Exactness (what the comparison may assume). Each value carries `exact`: both engines compute it
bit-identically (graph inputs, constants, data movement, Relu/Abs/Neg/Max/Min/Where/Clip/comparisons
/Cast of exact values). Discontinuous ops (Floor, Ceil, Round, Sign, comparisons, float->int Cast,
ArgMax, quantisers) are applied only to exact values, so a last-bit difference in float arithmetic
can never flip them. The one exception, in FULL only (`Profile.p_inexact_quant`), is a quantiser
reading a computed value: its outputs are marked `loose` (a one-step rounding flip is possible).

Known bugs (`KNOWN_BUGS`) each have a strict xfail in tests/test_fuzz_regressions.py; the generator
steers around them so that it keeps finding new ones. Where onnxruntime itself departs from the ONNX
specification (Slice with end = INT64_MAX and a negative step: onnxruntime slices to the beginning,
the spec clamps to n - 1), the generator does not go.
"""

from __future__ import annotations

import math
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

OPSET = 17
IR_VERSION = 9  # what today's onnxruntime loads

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)
I32 = np.dtype(np.int32)
BOOL = np.dtype(np.bool_)
U8 = np.dtype(np.uint8)
I8 = np.dtype(np.int8)
_ONNX_TYPE = {F32: TensorProto.FLOAT, I64: TensorProto.INT64, I32: TensorProto.INT32, BOOL: TensorProto.BOOL,
              U8: TensorProto.UINT8, I8: TensorProto.INT8}
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min

MAX_ELEMENTS = 3 * 4095  # keep every tensor small: a case runs in milliseconds once compiled

# Known compiler bugs, each reproduced by a strict xfail in tests/test_fuzz_regressions.py: the generator
# steers around them so that the fuzzer keeps finding new ones. Remove an entry when its bug is fixed.
# Known so far and fixed (51a5c2f): "qdq_scale_shape_1" (test_qdq_matmul_with_one_element_1d_scale) and
# "slice_fold_before_start" (test_constant_slice_negative_step_from_before_the_start).
KNOWN_BUGS: frozenset[str] = frozenset()

# Tolerances of `run_case` (see tests/test_fuzz_differential.py for the reasoning).
ATOL = 1e-5
RTOL = 1e-4
LOOSE_RTOL = 2e-2


# ----------------------------------------------------------------------------------------------
# profiles


@dataclass(frozen=True)
class Profile:
    """What a generator may draw from; see the module docstring for why QUICK is narrow."""

    name: str
    widths: tuple[int, ...]  # feature sizes: last dims, GEMM K and N
    batches: tuple[int, ...]
    seqs: tuple[int, ...]
    consts: tuple[float, ...]  # scalar constants (inlined into generated kernels)
    unary: tuple[str, ...]
    binary: tuple[str, ...]
    n_motifs: tuple[int, int]
    p_wide: float  # chance that a case's main input is 4095 wide
    p_inexact_quant: float  # chance that a quantiser reads a computed (inexact) value
    free_constants: bool  # scalar constants drawn at random instead of from `consts`
    attention_width: int  # hidden size of the attention motif (heads of 16 fuse)
    max_rank: int  # values of higher rank only inside the attention block
    p_2d_main: float  # chance that the main input is [rows, D] rather than [B, S, D]
    motif_weights: tuple[tuple[str, float], ...] = ()
    rowwise: bool = False  # bucketed: every value keeps [batch, seq] leading axes, no op mixes positions


_BASE_WEIGHTS = (
    ("unary", 1.0), ("binary", 2.0), ("variadic", 0.3), ("clip", 0.4), ("where", 0.6), ("cast", 0.4),
    ("int_ops", 0.4), ("matmul_w", 2.5), ("dual_product_add", 0.7), ("matmul_act", 0.8), ("gemm", 0.6),
    ("layernorm", 0.8), ("layernorm_spelled", 0.6), ("add_two_layernorms", 0.5), ("softmax", 0.6),
    ("attention", 0.25), ("transpose", 0.7), ("reshape", 0.7), ("concat", 0.6), ("slice", 0.6),
    ("gather", 0.6), ("squeeze_unsqueeze", 0.5), ("expand", 0.3), ("split", 0.3), ("flatten", 0.2),
    ("identity", 0.15), ("reduce", 0.8), ("argmax", 0.2), ("cumsum", 0.15), ("qdq_matmul", 0.7),
    ("dynamic_matmul", 0.7), ("fake_quant", 0.3), ("residual_output", 0.4), ("weight_as_data", 0.3),
    ("const_fold", 0.3), ("duplicate", 0.4),
)

QUICK = Profile(
    name="quick",
    widths=(17,),
    batches=(1, 2, 3),
    seqs=(1, 3, 5),
    consts=(0.5, 2.0, -1.0),
    unary=("Relu", "Tanh", "Neg", "Sigmoid", "Abs", "Exp", "Sqrt"),
    binary=("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"),
    n_motifs=(2, 5),
    p_wide=0.02,
    p_inexact_quant=0.0,
    free_constants=False,
    attention_width=32,
    max_rank=3,
    p_2d_main=0.1,
    motif_weights=_BASE_WEIGHTS,
)

FULL = Profile(
    name="full",
    widths=(1, 3, 16, 17, 32, 100, 4095),  # 100: three GEMM column panels, the last one partial
    batches=(1, 2, 3),
    seqs=(1, 3, 5, 17),
    consts=(0.5, 2.0, -1.0, 3.0, 0.125, -0.25, 1.0, 0.0),
    unary=("Relu", "Tanh", "Neg", "Sigmoid", "Abs", "Exp", "Sqrt", "Log", "Reciprocal", "Erf", "Sin", "Cos",
           "Floor", "Ceil", "Round", "Sign", "LeakyRelu", "Elu", "HardSigmoid", "Softplus"),
    binary=("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu"),
    n_motifs=(2, 10),
    p_wide=0.04,
    p_inexact_quant=0.2,
    free_constants=True,
    attention_width=32,
    max_rank=5,
    p_2d_main=0.2,
    motif_weights=_BASE_WEIGHTS + (("long_chain", 0.3), ("degenerate_quant", 0.15), ("qlinear_matmul", 0.3)),
)

BUCKETED = Profile(
    name="bucketed",
    widths=(17,),
    batches=(2, 3),
    seqs=(5, 7),
    consts=QUICK.consts,
    unary=QUICK.unary,
    binary=QUICK.binary,
    n_motifs=(2, 5),
    p_wide=0.0,
    p_inexact_quant=0.0,
    free_constants=False,
    attention_width=32,
    max_rank=3,
    p_2d_main=0.0,
    motif_weights=(
        ("unary", 1.0), ("binary", 2.0), ("clip", 0.4), ("rw_where", 0.5), ("rw_cast", 0.3), ("matmul_w", 2.5),
        ("dual_product_add", 0.7), ("layernorm", 0.8), ("layernorm_spelled", 0.6), ("add_two_layernorms", 0.5),
        ("softmax", 0.5), ("rw_reduce", 0.6), ("attention", 0.5), ("qdq_matmul", 0.6), ("fake_quant", 0.3),
        ("qlinear_matmul", 0.3), ("residual_output", 0.4), ("duplicate", 0.3), ("pool", 0.5),
    ),
    rowwise=True,
)

PROFILES = {p.name: p for p in (QUICK, FULL, BUCKETED)}


# ----------------------------------------------------------------------------------------------
# values and the builder


@dataclass(eq=False)
class Val:
    """A value the graph has computed so far (or a graph input)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    exact: bool = True  # both engines compute it bit-identically
    mag: float = 1.0  # rough bound of |value| (keeps values finite and in range)
    peak: float = 1.0  # largest magnitude on its way here (float errors scale with it)
    loose: bool = False  # depends on a quantiser of an inexact value
    uses: int = 0
    is_input: bool = False
    internal: bool = False  # inside a fusable pattern: picked less often, so the pattern stays whole
    const: bool = False  # computed from constants only (the compiler folds it)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class GeneratorSkip(Exception):
    """A motif found nothing to apply to; the builder tries another."""


@dataclass
class Case:
    """One generated model with its inputs and what the comparison needs to know."""

    seed: int
    profile: str
    model: onnx.ModelProto
    feeds: list[dict[str, np.ndarray]]  # two feeds: the second run checks no state leaks between runs
    input_shapes: dict[str, tuple[int, ...]]
    output_shapes: dict[str, tuple[int, ...]]
    output_dtypes: dict[str, np.dtype]
    peaks: dict[str, float]
    loose: set[str]
    patterns: Counter
    ops: Counter
    motifs: Counter = field(default_factory=Counter)
    buckets: tuple[int, list[int]] | None = None  # bucketed: compile with (batch_size, sequence_length)

    def summary(self) -> str:
        """One line: inputs, outputs, op counts and the named patterns the case contains."""
        ins = " ".join(f"{k}{list(v)}" for k, v in self.input_shapes.items())
        outs = " ".join(f"{k}{list(v)}" for k, v in self.output_shapes.items())
        ops = " ".join(f"{k}x{v}" for k, v in sorted(self.ops.items()))
        pats = " ".join(f"{k}x{v}" for k, v in sorted(self.patterns.items()))
        motifs = " ".join(f"{k}x{v}" for k, v in sorted(self.motifs.items()))
        buckets = f" buckets: batch {self.buckets[0]} x seq {self.buckets[1]}, runs " + " ".join(
            str(tuple(next(iter(f.values())).shape[:2])) for f in self.feeds) + " |" if self.buckets else ""
        return (f"seed={self.seed} [{self.profile}]{buckets} inputs: {ins} | outputs: {outs} | ops: {ops} | "
                f"patterns: {pats} | motifs: {motifs}")


class _Builder:
    def __init__(self, rng: np.random.Generator, profile: Profile) -> None:
        self.rng = rng
        self.p = profile
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[Val] = []
        self.input_protos: list[onnx.ValueInfoProto] = []
        self.feeds: list[dict[str, np.ndarray]] = [{}, {}]
        self.pool: list[Val] = []
        self.patterns: Counter = Counter()
        self.ops: Counter = Counter()
        self.forced_outputs: list[Val] = []
        self.motifs: Counter = Counter()
        self.const_shapes: dict[str, tuple[int, ...]] = {}
        self.const_dtypes: dict[str, np.dtype] = {}
        self.vals: dict[str, Val] = {}  # every value by name
        self.high_rank_ok = False
        self.rowwise = profile.rowwise
        self.run_shapes: list[tuple[int, int]] = []  # rowwise: the (batch, seq) of each feed
        self.input_kinds: dict[str, tuple[np.dtype, tuple[int, ...], int, bool]] = {}
        self.fp32_weights: list[tuple[str, tuple[int, int]]] = []  # constant MatMul weights, for tying
        self.int8_weights: list[tuple[tuple[str, ...], dict[str, int], tuple[int, int]]] = []
        self._count = 0

    # -- small helpers ---------------------------------------------------------------------
    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def choice(self, items):  # type: ignore[no-untyped-def]
        return items[int(self.rng.integers(len(items)))]

    def pconst(self, nonzero: bool = False, positive: bool = False) -> float:
        """A scalar constant: from the profile's palette (QUICK) or random (FULL)."""
        if self.p.free_constants and self.chance(0.5):
            v = float(np.float32(self.rng.normal() * 2.0))
            if positive:
                v = abs(v) + 0.25
            elif nonzero and abs(v) < 0.25:
                v = 0.25 if v >= 0 else -0.25
            return v
        pal = [c for c in self.p.consts if (not nonzero or c != 0.0) and (not positive or c > 0.0)]
        return float(self.choice(pal))

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self.name(hint)
        value = np.asarray(value)
        self.inits.append(nh.from_array(value, name))
        self.const_shapes[name] = tuple(value.shape)
        self.const_dtypes[name] = value.dtype
        return name

    def scalar(self, value: float, dtype: np.dtype = F32, qparam: bool = False) -> str:
        """A scalar initializer, spelled as shape () or [1] (exporters write both)."""
        shape = () if self.chance(0.6) or (qparam and "qdq_scale_shape_1" in KNOWN_BUGS) else (1,)
        return self.const(np.full(shape, value, dtype=dtype), "s")

    def ints(self, values, hint: str = "i") -> str:  # type: ignore[no-untyped-def]
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def weights(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) / math.sqrt(max(fan_in, 1))).astype(np.float32)

    # -- graph inputs ----------------------------------------------------------------------
    def graph_input(self, shape: tuple[int, ...], dtype: np.dtype = F32, high: int = 0, hint: str = "x",
                    mask: bool = False) -> Val:
        """A new graph input with its feeds (`mask`: an attention mask, whose first column is 1)."""
        name = self.name(hint)
        dims: list[int | str] = list(shape)
        if self.rowwise:  # bucketed: [batch, seq, ...], sizes chosen by the engine's buckets
            if shape[:2] != self.run_shapes[0]:
                raise GeneratorSkip("bucketed inputs are [batch, seq, ...]")
            dims[:2] = ["batch", "seq"]
        elif self.chance(0.3) and dims:  # a symbolic dimension: the compiler specialises it
            axis = int(self.rng.integers(len(dims)))
            dims[axis] = f"{name}_d{axis}"  # one name per input: equal names promise equal sizes
        self.input_protos.append(oh.make_tensor_value_info(name, _ONNX_TYPE[dtype], dims))
        self.input_kinds[name] = (dtype, tuple(shape[2:]), high, mask)
        for feed in self.feeds:
            feed[name] = self.feed_value(shape, dtype, high, mask)
        v = Val(name, tuple(shape), dtype, exact=True, mag=4.0 if dtype == F32 else float(high), peak=4.0,
                is_input=True)
        self.inputs.append(v)
        self.pool.append(v)
        self.vals[name] = v
        return v

    def feed_value(self, shape: tuple[int, ...], dtype: np.dtype, high: int, mask: bool) -> np.ndarray:
        if dtype == F32:
            return self.rng.standard_normal(shape).astype(np.float32)
        if dtype == BOOL:
            return self.rng.random(shape) < 0.5
        value = self.rng.integers(0, max(high, 1), shape).astype(dtype)
        if mask:
            value[:, 0] = 1  # every row attends to something
        return value

    # -- nodes -----------------------------------------------------------------------------
    def emit(self, op: str, inputs: list[Val | str], shape: tuple[int, ...], dtype: np.dtype = F32, *,
             exact: bool | None = None, mag: float | None = None, peak: float | None = None,
             pool: bool = True, internal: bool = False, **attrs) -> Val:  # type: ignore[no-untyped-def]
        """Append one single-output node; the output joins the pool unless `pool=False`."""
        vals = [v for v in inputs if isinstance(v, Val)]
        names = [v.name if isinstance(v, Val) else v for v in inputs]
        out = self.name(op.lower())
        self.nodes.append(oh.make_node(op, names, [out], **attrs))
        self.ops[op] += 1
        for v in vals:
            v.uses += 1
        if int(np.prod(shape, dtype=np.int64)) > 4 * MAX_ELEMENTS:
            raise GeneratorSkip(f"{op} output {shape} too large")
        if len(shape) > self.p.max_rank and not self.high_rank_ok:
            raise GeneratorSkip(f"{op} output of rank {len(shape)}")
        in_mag = max((v.mag for v in vals if v.dtype == F32), default=1.0)
        mag = in_mag if mag is None else mag
        if exact is None:
            exact = all(v.exact for v in vals)
        in_peak = max((v.peak for v in vals), default=1.0)
        peak = max(in_peak, mag) if peak is None else peak
        val = Val(out, tuple(int(d) for d in shape), dtype, exact=exact, mag=float(min(mag, 1e30)),
                  peak=float(min(peak, 1e30)), loose=any(v.loose for v in vals), internal=internal,
                  const=all(v.const for v in vals))
        self.vals[out] = val
        if pool:
            self.pool.append(val)
        return val

    def emit_multi(self, op: str, inputs: list[Val | str], outs: list[tuple[tuple[int, ...], np.dtype]],
                   exact: bool, mag: float, **attrs) -> list[Val]:  # type: ignore[no-untyped-def]
        vals = [v for v in inputs if isinstance(v, Val)]
        names = [v.name if isinstance(v, Val) else v for v in inputs]
        out_names = [self.name(op.lower()) for _ in outs]
        self.nodes.append(oh.make_node(op, names, out_names, **attrs))
        self.ops[op] += 1
        for v in vals:
            v.uses += 1
        peak = max([v.peak for v in vals] + [mag])
        result = [Val(n, tuple(s), dt, exact=exact, mag=mag, peak=peak, loose=any(v.loose for v in vals))
                  for n, (s, dt) in zip(out_names, outs, strict=True)]
        self.vals.update((v.name, v) for v in result)
        self.pool.extend(result)
        return result

    # -- picking ---------------------------------------------------------------------------
    def pick(self, pred: Callable[[Val], bool] | None = None, dtype: np.dtype | None = F32,
             max_mag: float = 1e6) -> Val:
        """A pool value, preferring recent values and values that already have consumers."""
        cands = [v for v in self.pool if (dtype is None or v.dtype == dtype) and v.mag <= max_mag
                 and 0 < v.size <= MAX_ELEMENTS and (pred is None or pred(v))]
        if not cands:
            raise GeneratorSkip("no value fits")
        n = len(self.pool)
        order = {v.name: i for i, v in enumerate(self.pool)}
        w = np.array([(1.0 + 2.0 * order[v.name] / n + 1.5 * min(v.uses, 2)) * (0.1 if v.internal else 1.0)
                      for v in cands])
        return cands[int(self.rng.choice(len(cands), p=w / w.sum()))]

    # -- elementwise building blocks -------------------------------------------------------
    def unary(self, op: str, x: Val) -> Val:
        """`op(x)` with its domain guarded (Sqrt/Log/Reciprocal of |x| + c, Exp of a bounded value)."""
        if op in ("Floor", "Ceil", "Round", "Sign") and not x.exact:
            op = "Relu"
        if op == "Exp" and x.mag > 6.0:
            x = self.emit("Tanh", [x], x.shape, mag=1.0)
        if op in ("Sqrt", "Log", "Reciprocal"):
            a = self.emit("Abs", [x], x.shape)
            x = self.emit("Add", [a, self.scalar(self.choice([0.5, 1.0]))], x.shape, mag=x.mag + 1.0)
        attrs: dict[str, float] = {}
        if op == "LeakyRelu":
            attrs["alpha"] = self.choice([0.01, 0.2])
        elif op == "Elu":
            attrs["alpha"] = self.choice([1.0, 0.5])
        elif op == "HardSigmoid":
            attrs.update(alpha=self.choice([0.2, 0.25]), beta=0.5)
        bounded = {"Tanh": 1.0, "Sigmoid": 1.0, "Erf": 1.0, "Sin": 1.0, "Cos": 1.0, "Sign": 1.0, "HardSigmoid": 1.0}
        exact_ops = {"Relu", "Neg", "Abs", "Floor", "Ceil", "Round", "Sign"}
        mag = bounded.get(op, x.mag)
        if op == "Exp":
            mag = math.exp(x.mag)
        elif op in ("Sqrt", "Log"):
            mag = math.sqrt(x.mag) + 1.0
        elif op == "Reciprocal":
            mag = 2.0
        elif op in ("Floor", "Ceil", "Round"):
            mag = x.mag + 1.0
        exact = x.exact and op in exact_ops
        return self.emit(op, [x], x.shape, exact=exact, mag=mag, **attrs)

    def bcast_shape(self, shape: tuple[int, ...], grow: bool = True) -> tuple[int, ...]:
        """A shape that broadcasts with `shape` to `shape`, or (`grow`) to `shape` with a leading 1
        more: scalar, trailing dims, size-1 dims."""
        r = self.rng.random()
        if not shape or r < 0.12:
            return ()
        if self.rowwise:  # constants never span the batch / sequence axes, whose sizes vary by bucket
            return self.choice([shape[-1:], (1,) * (len(shape) - 1) + shape[-1:], (1,) * len(shape)])
        if r < 0.35:
            return shape[-1:]
        if r < 0.5:
            ones = int(self.rng.integers(1, len(shape) + (1 if grow else 0))) if len(shape) > 1 else 0
            return (1,) * ones + shape[-1:]
        if r < 0.75:
            return tuple(d if self.chance(0.5) else 1 for d in shape)
        if r < 0.85 and len(shape) > 1:
            return shape[1:]
        return shape

    def operand(self, x: Val, allow_value: bool = True, const_ok: bool = True) -> Val | str:
        """A second operand for `x`: another pool value it broadcasts with, or a constant."""
        if allow_value and (not const_ok or self.chance(0.55)):
            def fits(v: Val) -> bool:
                if self.rowwise:  # same leading axes, last axis equal or 1
                    return v.shape[:-1] == x.shape[:-1] and v.shape[-1] in (1, x.shape[-1])
                try:
                    out = np.broadcast_shapes(v.shape, x.shape)
                except ValueError:
                    return False
                return int(np.prod(out, dtype=np.int64)) <= MAX_ELEMENTS and len(out) <= 4

            try:
                return self.pick(fits, max_mag=100.0)
            except GeneratorSkip:
                if not const_ok:
                    raise
        shape = self.bcast_shape(x.shape)
        if int(np.prod(shape, dtype=np.int64)) == 1 and self.chance(0.8):
            return self.scalar(self.pconst()) if not shape else self.const(
                np.full(shape, self.pconst(), np.float32))
        return self.const(self.rng.standard_normal(shape).astype(np.float32), "t")

    def binary(self, op: str, a: Val, b: Val | str) -> Val:
        """`op(a, b)` (operand order at random) with Div/Pow kept away from poles and NaNs."""
        b_val = b if isinstance(b, Val) else None
        b_mag = b_val.mag if b_val is not None else 2.0
        if op == "Div":
            if b_val is not None or self.chance(0.3):
                src = b_val if b_val is not None else a
                den = self.emit("Abs", [src], src.shape)
                b = self.emit("Add", [den, self.scalar(self.choice([0.5, 1.0]))], src.shape, mag=src.mag + 1.0)
            else:
                b = self.scalar(self.pconst(nonzero=True) or 2.0)
            return self.emit("Div", [a, b], self.shape_of(a, b), exact=False, mag=a.mag * 2.0)
        if op == "Pow":
            if self.chance(0.6) or b_val is None:
                e = self.choice([2.0, 3.0] if a.mag <= 20 else [2.0])
                return self.emit("Pow", [a, self.scalar(e)], a.shape, exact=False, mag=a.mag ** e + 1.0)
            base = self.emit("Add", [self.emit("Abs", [a], a.shape), self.scalar(0.5)], a.shape, mag=a.mag + 0.5)
            expo = self.emit("Tanh", [b_val], b_val.shape, mag=1.0)
            return self.emit("Pow", [base, expo], self.shape_of(base, expo), exact=False, mag=base.mag + 2.0)
        if op == "PRelu":
            # the slope broadcasts to x one way only (its rank at most x's)
            slope = self.const(self.rng.uniform(0.0, 0.5, self.bcast_shape(a.shape, grow=False)).astype(np.float32),
                               "slope")
            return self.emit("PRelu", [a, slope], a.shape, exact=False)
        if op == "Mul" and a.mag * b_mag > 1e3:
            op = "Add"
        mag = {"Add": a.mag + b_mag, "Sub": a.mag + b_mag, "Mul": a.mag * b_mag}.get(op, max(a.mag, b_mag))
        exact = op in ("Max", "Min") and a.exact and (b_val is None or b_val.exact)
        args = [a, b] if self.chance(0.6) else [b, a]
        return self.emit(op, args, self.shape_of(a, b), exact=exact, mag=mag)

    def shape_of(self, *operands: Val | str) -> tuple[int, ...]:
        """The broadcast shape of values and constants (ValueError if they do not broadcast)."""
        shapes = [v.shape if isinstance(v, Val) else self.const_shapes[v] for v in operands]
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))

    # -- activations and products ----------------------------------------------------------
    def internalise(self, start: int, *also: Val) -> None:
        """Mark `also` and the pool values added since `start`, but the last, as inside a pattern."""
        for v in [*also, *self.pool[start:-1]]:
            v.internal = True

    def activation(self, y: Val, kind: str | None = None) -> Val:
        """An activation spelled the ways exporters spell it (the compiler recognises them numerically)."""
        start = len(self.pool)
        out = self._activation(y, kind)
        self.internalise(start, y)
        return out

    def _activation(self, y: Val, kind: str | None) -> Val:
        kind = kind or self.choice(["relu", "gelu_erf", "gelu_tanh", "relu_max", "silu", "tanh"])
        s = y.shape
        m = y.mag
        if kind == "gelu_tanh" and m > 20:  # x^3 would dominate the sample points' error
            kind = "gelu_erf"
        self.patterns[f"act_{kind}"] += 1
        if kind == "relu":
            return self.emit("Relu", [y], s)
        if kind == "relu_max":
            return self.emit("Max", [y, self.scalar(0.0)], s)
        if kind == "tanh":
            return self.emit("Tanh", [y], s, mag=1.0)
        if kind == "silu":
            return self.emit("Mul", [y, self.emit("Sigmoid", [y], s, mag=1.0)], s, mag=m)
        if kind == "gelu_erf":
            if self.chance(0.5):  # torch: x * 0.5 * (1 + erf(x / sqrt(2)))  -> Div, Erf, Add, Mul, Mul
                d = self.emit("Div", [y, self.scalar(1.4142135381698608)], s)
                e = self.emit("Erf", [d], s, mag=1.0)
                a = self.emit("Add", [e, self.scalar(1.0)], s, mag=2.0)
                h = self.emit("Mul", [y, a], s, mag=2 * m)
                return self.emit("Mul", [h, self.scalar(0.5)], s, mag=m)
            h = self.emit("Mul", [self.scalar(0.5), y], s, mag=m)
            e = self.emit("Erf", [self.emit("Mul", [y, self.scalar(0.7071067690849304)], s)], s, mag=1.0)
            return self.emit("Mul", [h, self.emit("Add", [self.scalar(1.0), e], s, mag=2.0)], s, mag=m)
        # gelu_tanh: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
        cube = self.emit("Pow", [y, self.scalar(3.0)], s, mag=m ** 3) if self.chance(0.5) else self.emit(
            "Mul", [self.emit("Mul", [y, y], s, mag=m * m), y], s, mag=m ** 3)
        inner = self.emit("Add", [y, self.emit("Mul", [cube, self.scalar(0.044715)], s)], s)
        t = self.emit("Tanh", [self.emit("Mul", [inner, self.scalar(0.7978845834732056)], s)], s, mag=1.0)
        h = self.emit("Mul", [y, self.scalar(0.5)], s, mag=m)
        return self.emit("Mul", [h, self.emit("Add", [t, self.scalar(1.0)], s, mag=2.0)], s, mag=m)

    def bias(self, y: Val) -> Val:
        n = y.shape[-1]
        shape = self.choice([(n,), (n,), (1, n), (1,) * max(y.rank - 1, 1) + (n,)])
        b = self.const(self.rng.standard_normal(shape).astype(np.float32) * 0.5, "bias")
        args = [y, b] if self.chance(0.7) else [b, y]
        y.internal = True
        return self.emit("Add", args, self.shape_of(y, b), mag=y.mag + 2.0)

    def product(self, x: Val, n: int, tie: bool = True) -> Val:
        """x @ W for a constant [K, n] weight W; now and then an earlier weight with the same K instead
        (tied weights: one packed weight, several products, maybe different epilogues)."""
        k = x.shape[-1]
        tied = [w for w in self.fp32_weights if w[1][0] == k]
        if tie and tied and self.chance(0.15):
            name, (_, n) = tied[int(self.rng.integers(len(tied)))]
            self.patterns["tied_weight"] += 1
        else:
            name = self.const(self.weights((k, n), k), "w")
            self.fp32_weights.append((name, (k, n)))
        out_shape = x.shape[:-1] + (n,) if x.rank > 1 else (n,)
        return self.emit("MatMul", [x, name], out_shape, exact=False, mag=x.mag * 1.5 + 1.0)

    def epilogue(self, y: Val, p_bias: float = 0.7, p_act: float = 0.45, p_res: float = 0.35) -> Val:
        """Bias Add, activation and residual Add after a product, each optional (the fusion's shape)."""
        if self.chance(p_bias):
            y = self.bias(y)
        if self.chance(p_act):
            y = self.activation(y)
        if self.chance(p_res):
            try:
                inside = self.chance(0.1)  # now and then a residual from inside the chain itself
                r = self.pick(lambda v: v.shape == y.shape and v is not y and (inside or not v.internal),
                              max_mag=100.0)
            except GeneratorSkip:
                return y
            self.patterns["residual"] += 1
            y.internal = True
            args = [y, r] if self.chance(0.6) else [r, y]
            y = self.emit("Add", args, y.shape, mag=y.mag + r.mag)
            if self.chance(0.25):
                self.patterns["residual_is_output"] += 1
                self.forced_outputs.append(y)
        return y

    def gemm_widths(self) -> tuple[int, ...]:
        """Widths for products' N (and K, unless the 4095-wide input is used)."""
        return tuple(w for w in self.p.widths if w <= 128) or (17,)

    def exact_float(self, min_rank: int = 1) -> Val:
        """A float value both engines hold bit-identically (for discontinuous ops and quantisers)."""
        return self.pick(lambda v: v.exact and v.rank >= min_rank)

    def quant_input(self, k_ok: Callable[[int], bool]) -> Val:
        """A value to quantise whose last axis passes `k_ok` (FULL: the 4095-wide input as well)."""
        if self.p.name == "full":
            k_ok = (lambda ok: lambda k: ok(k) or k == 4095)(k_ok)
        if self.chance(self.p.p_inexact_quant):
            return self.pick(lambda v: v.rank >= 2 and k_ok(v.shape[-1]), max_mag=50.0)
        return self.pick(lambda v: v.exact and v.rank >= 2 and k_ok(v.shape[-1]), max_mag=50.0)


# ----------------------------------------------------------------------------------------------
# motifs: each adds a few nodes reading pool values (raises GeneratorSkip when nothing fits)


def _m_unary(b: _Builder) -> None:
    op = b.choice(b.p.unary)
    x = b.exact_float() if op in ("Floor", "Ceil", "Round", "Sign") else b.pick()
    b.unary(op, x)


def _m_binary(b: _Builder) -> None:
    a = b.pick(max_mag=1e3)
    op = b.choice(b.p.binary)
    other = b.operand(a)
    if isinstance(other, Val) and other.shape != a.shape:
        b.patterns["broadcast_values"] += 1
    b.binary(op, a, other)


def _m_variadic(b: _Builder) -> None:
    a = b.pick(max_mag=100.0)
    op = b.choice(["Max", "Min", "Sum", "Mean"])
    args: list[Val | str] = [a] + [b.operand(a) for _ in range(int(b.rng.integers(1, 3)))]
    exact = op in ("Max", "Min") and all(not isinstance(v, Val) or v.exact for v in args)
    b.emit(op, args, b.shape_of(*args), exact=exact, mag=a.mag * len(args) + 2.0)


def _m_clip(b: _Builder) -> None:
    x = b.pick()
    lo = b.scalar(-abs(b.pconst(nonzero=True))) if b.chance(0.8) else ""
    hi = b.scalar(abs(b.pconst(nonzero=True))) if (b.chance(0.8) or not lo) else ""
    inputs: list[Val | str] = [x, lo, hi] if hi else [x, lo]
    b.emit("Clip", inputs, x.shape, mag=min(x.mag, 4.0))


def _condition(b: _Builder, like: Val) -> Val:
    """A bool tensor broadcasting with `like`: a comparison of exact values, maybe combined."""
    a = b.pick(lambda v: v.exact and v.dtype in (F32, I64), dtype=None)
    if a.dtype == I64:
        other: Val | str = b.const(np.array(int(b.rng.integers(0, 3)), np.int64))
    else:
        other = b.operand(a) if b.chance(0.5) else b.scalar(b.pconst())
        if isinstance(other, Val) and not other.exact:
            other = b.scalar(0.0)
    op = b.choice(["Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual"])
    c = b.emit(op, [a, other], b.shape_of(a, other), BOOL, exact=True, mag=1.0)
    if b.chance(0.25):
        c = b.emit("Not", [c], c.shape, BOOL, exact=True, mag=1.0)
    if b.chance(0.2):
        c2 = b.emit("Less", [a, b.scalar(b.pconst()) if a.dtype == F32 else b.const(np.array(1, np.int64))],
                    a.shape, BOOL, exact=True, mag=1.0)
        c = b.emit(b.choice(["And", "Or", "Xor"]), [c, c2], b.shape_of(c, c2), BOOL, exact=True, mag=1.0)
    return c


def _m_where(b: _Builder) -> None:
    x = b.pick(max_mag=1e3)
    c = _condition(b, x)
    y = b.operand(x)
    try:
        shape = b.shape_of(c, x, y)
    except ValueError:
        c = b.emit("Greater", [x, b.scalar(0.0)], x.shape, BOOL, exact=True, mag=1.0) if x.exact else \
            _exact_cond(b, x)
        shape = b.shape_of(c, x, y)
    if int(np.prod(shape)) > MAX_ELEMENTS:
        raise GeneratorSkip("where too large")
    args = [c, x, y] if b.chance(0.5) else [c, y, x]
    ymag = y.mag if isinstance(y, Val) else 2.0
    exact = x.exact and (not isinstance(y, Val) or y.exact)
    b.emit("Where", args, shape, exact=exact, mag=max(x.mag, ymag))


def _exact_cond(b: _Builder, like: Val) -> Val:
    src = b.const((b.rng.random(like.shape) < 0.5), "mask")
    return b.emit("Not", [src], like.shape, BOOL, exact=True, mag=1.0)


def _m_cast(b: _Builder) -> None:
    r = b.rng.random()
    if r < 0.4:  # float -> int64 -> float (truncation toward zero) on an exact value
        x = b.exact_float()
        to = b.choice([TensorProto.INT64, TensorProto.INT32])
        i = b.emit("Cast", [x], x.shape, I64 if to == TensorProto.INT64 else I32, exact=True, mag=x.mag, to=to)
        b.emit("Cast", [i], x.shape, exact=True, mag=x.mag, to=TensorProto.FLOAT)
    elif r < 0.6:  # float -> float (a no-op cast)
        x = b.pick()
        b.emit("Cast", [x], x.shape, mag=x.mag, to=TensorProto.FLOAT)
    elif r < 0.8:  # bool -> float
        x = b.pick()
        c = _condition(b, x)
        b.emit("Cast", [c], c.shape, exact=True, mag=1.0, to=TensorProto.FLOAT)
    else:  # int -> float
        i = b.pick(dtype=I64)
        b.emit("Cast", [i], i.shape, exact=True, mag=i.mag, to=TensorProto.FLOAT)


def _int_source(b: _Builder) -> Val:
    try:
        return b.pick(lambda v: v.mag < 1e6, dtype=I64)
    except GeneratorSkip:
        x = b.exact_float()
        return b.emit("Cast", [x], x.shape, I64, exact=True, mag=x.mag, to=TensorProto.INT64)


def _m_int_ops(b: _Builder) -> None:
    """int64 arithmetic: C-style Div (truncation), Python-style Mod, Max/Min/Abs/Neg, then back to float."""
    i = _int_source(b)
    op = b.choice(["Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Neg", "Abs"])
    if op in ("Neg", "Abs"):
        out = b.emit(op, [i], i.shape, I64, exact=True, mag=i.mag)
    else:
        c = int(b.choice([-3, 2, 5, 7])) if op in ("Div", "Mod") else int(b.rng.integers(-4, 5))
        other = b.const(np.array(c, np.int64)) if b.chance(0.7) or op in ("Div", "Mod") else i
        mag = i.mag * 8 if op == "Mul" else i.mag + 8
        out = b.emit(op, [i, other], i.shape, I64, exact=True, mag=mag)
    if b.chance(0.6):
        b.emit("Cast", [out], out.shape, exact=True, mag=out.mag, to=TensorProto.FLOAT)


def _m_matmul_w(b: _Builder) -> None:
    """x @ W (+ bias) (+ activation) (+ residual): the transformer projection, in every spelling."""
    widths = b.gemm_widths()
    if b.p.name == "full":
        x = b.pick(lambda v: v.rank >= 1 and v.shape[-1] <= 4095, max_mag=50.0)
    else:
        x = b.pick(lambda v: v.rank >= 2 and v.shape[-1] in widths, max_mag=50.0)
    b.epilogue(b.product(x, int(b.choice(widths))))


def _m_dual_product_add(b: _Builder) -> None:
    """(x @ W1 + b1) + (x @ W2 + b2): two fusable products feeding one Add (both want it as residual)."""
    widths = b.gemm_widths()
    x = b.pick(lambda v: v.rank >= 2 and v.shape[-1] in widths, max_mag=50.0)
    n = int(b.choice(widths))
    y1 = b.product(x, n, tie=False)
    w1 = b.nodes[-1].input[1]
    y1 = b.bias(y1) if b.chance(0.85) else y1
    x2 = x if b.chance(0.8) else b.pick(lambda v: v.shape == x.shape, max_mag=50.0)
    if b.chance(0.15):  # the very same product twice (a common-subexpression candidate)
        b.patterns["dual_same_weight"] += 1
        y2 = b.emit("MatMul", [x2, w1], x2.shape[:-1] + (n,), exact=False, mag=x2.mag * 1.5 + 1)
    else:
        y2 = b.product(x2, n, tie=False)
    y2 = b.bias(y2) if b.chance(0.85) else y2
    if b.chance(0.3):
        y2 = b.activation(y2)
    b.patterns["dual_product_add"] += 1
    s = b.emit("Add", [y1, y2], b.shape_of(y1, y2), mag=y1.mag + y2.mag)
    if b.chance(0.3):
        b.forced_outputs.append(s)


def _m_matmul_act(b: _Builder) -> None:
    """A product of two computed values: scores-like a @ bᵀ, a @ (graph input), batched broadcasting."""
    a = b.pick(lambda v: v.rank >= 2, max_mag=20.0)
    k = a.shape[-1]
    r = b.rng.random()
    if r < 0.45:  # a @ transpose(c) with c [..., M', K]
        c = b.pick(lambda v: v.rank == a.rank and v.shape[-1] == k and v.shape[:-2] == a.shape[:-2], max_mag=20.0)
        perm = list(range(c.rank - 2)) + [c.rank - 1, c.rank - 2]
        bt = b.emit("Transpose", [c], tuple(c.shape[p] for p in perm), perm=perm)
        b.patterns["matmul_a_bt"] += 1
    elif r < 0.75:  # a @ matrix graph input
        bt = b.graph_input((k, int(b.choice(b.gemm_widths()))), hint="m")
        b.patterns["matmul_input_weight"] += 1
    else:  # a @ c with c [.., K, N] found or made by Reshape; batch dims broadcast
        c = b.pick(lambda v: v.rank >= 2 and v.shape[-2] == k, max_mag=20.0)
        bt = c
        b.patterns["matmul_broadcast_batch"] += 1
    try:
        batch = np.broadcast_shapes(a.shape[:-2], bt.shape[:-2])
    except ValueError as exc:
        raise GeneratorSkip("batch dims do not broadcast") from exc
    shape = tuple(batch) + (a.shape[-2], bt.shape[-1])
    if int(np.prod(shape)) > MAX_ELEMENTS:
        raise GeneratorSkip("product too large")
    y = b.emit("MatMul", [a, bt], shape, exact=False, mag=a.mag * bt.mag * math.sqrt(k))
    if y.mag > 50:
        b.emit("Mul", [y, b.scalar(0.125)], y.shape, mag=y.mag / 8)


def _m_gemm(b: _Builder) -> None:
    """Gemm on a 2-D value (reshaped from 3-D when needed): transA/transB, alpha/beta, C shapes."""
    widths = b.gemm_widths()
    x = b.pick(lambda v: v.rank in (2, 3) and v.shape[-1] in widths, max_mag=50.0)
    if x.rank == 3:
        x = b.emit("Reshape", [x, b.ints([-1, x.shape[-1]])], (x.shape[0] * x.shape[1], x.shape[2]))
    m, k = x.shape
    n = int(b.choice(widths))
    attrs: dict[str, float | int] = {}
    a_in = x
    if b.chance(0.25):
        a_in = b.emit("Transpose", [x], (k, m), perm=[1, 0])
        attrs["transA"] = 1
    w = b.weights((k, n), k)
    if b.chance(0.4):
        w_in: Val | str = b.const(np.ascontiguousarray(w.T), "wt")
        attrs["transB"] = 1
    else:
        w_in = b.const(w, "w")
    if b.chance(0.15):  # B given at run time
        w_in = b.graph_input(w.T.shape if attrs.get("transB") else w.shape, hint="gb")
        b.patterns["gemm_runtime_b"] += 1
    if b.chance(0.4):
        attrs["alpha"] = b.pconst(nonzero=True)
    inputs: list[Val | str] = [a_in, w_in]
    if b.chance(0.75):
        c_shape = b.choice([(n,), (1, n), (m, n), (m, 1), ()])
        inputs.append(b.const(b.rng.standard_normal(c_shape).astype(np.float32), "gc"))
        if b.chance(0.4):
            attrs["beta"] = b.pconst()
    b.patterns["gemm"] += 1
    y = b.emit("Gemm", inputs, (m, n), exact=False, mag=x.mag * 4 + 4, **attrs)
    b.epilogue(y, p_bias=0.0, p_act=0.3, p_res=0.3)


def _ln_input(b: _Builder) -> Val:
    return b.pick(lambda v: v.rank >= 1 and v.shape[-1] > 1, max_mag=1e3)


def _m_layernorm(b: _Builder, x: Val | None = None) -> Val:
    x = x or _ln_input(b)
    axis = -1 if x.rank < 2 or b.rowwise or b.chance(0.8) else -2
    norm_shape = x.shape[axis:]
    gamma = b.const((1.0 + 0.3 * b.rng.standard_normal(norm_shape)).astype(np.float32), "gamma")
    inputs: list[Val | str] = [x, gamma]
    if b.chance(0.8):
        inputs.append(b.const((0.3 * b.rng.standard_normal(norm_shape)).astype(np.float32), "beta"))
    eps = b.choice([1e-5, 1e-12, 1e-6])
    attrs: dict[str, float | int] = {"epsilon": eps}
    if axis != -1 or b.chance(0.3):
        attrs["axis"] = axis
    n = int(np.prod(norm_shape))
    b.patterns["layernorm"] += 1
    return b.emit("LayerNormalization", inputs, x.shape, exact=False, mag=2.0 * math.sqrt(n) + 2.0,
                  peak=max(x.peak, 2.0 * math.sqrt(n) + 2.0), **attrs)


def _m_layernorm_spelled(b: _Builder, x: Val | None = None) -> Val:
    """mean/Sub/Pow/ReduceMean/Add eps/Sqrt/Div/Mul gamma/Add beta, as torch exports LayerNorm."""
    x = x or _ln_input(b)
    s = x.shape
    red = s[:-1] + (1,)
    d = x.shape[-1]
    mean = b.emit("ReduceMean", [x], red, exact=False, axes=[-1])
    diff = b.emit("Sub", [x, mean], s, exact=False, mag=2 * x.mag)
    sq = b.emit("Pow", [diff, b.scalar(2.0)], s, mag=4 * x.mag ** 2) if b.chance(0.6) else b.emit(
        "Mul", [diff, diff], s, mag=4 * x.mag ** 2)
    var = b.emit("ReduceMean", [sq], red, axes=[-1])
    eps = b.emit("Add", [var, b.scalar(b.choice([1e-5, 1e-12]))], red)
    std = b.emit("Sqrt", [eps], red, mag=2 * x.mag)
    mag = 2.0 * math.sqrt(d) + 2.0
    if b.chance(0.75):
        normed = b.emit("Div", [diff, std], s, mag=mag)
    else:
        normed = b.emit("Mul", [diff, b.emit("Reciprocal", [std], red, mag=1e3)], s, mag=mag)
    gamma = b.const((1.0 + 0.3 * b.rng.standard_normal((d,))).astype(np.float32), "gamma")
    y = b.emit("Mul", [normed, gamma] if b.chance(0.7) else [gamma, normed], s, mag=mag * 2)
    if b.chance(0.8):
        y = b.emit("Add", [y, b.const((0.3 * b.rng.standard_normal((d,))).astype(np.float32), "beta")], s,
                   mag=mag * 2 + 1)
    y.peak = max(x.peak, y.mag)
    b.patterns["layernorm_spelled"] += 1
    return y


def _m_add_two_layernorms(b: _Builder) -> None:
    """s = a + r; LN1(s), LN2(s) (op or spelled): one Add, two normalisations, maybe s returned too."""
    a = _ln_input(b)
    r = b.operand(a, const_ok=False) if b.chance(0.7) else b.operand(a)
    s = b.emit("Add", [a, r], b.shape_of(a, r), exact=False, mag=a.mag + (r.mag if isinstance(r, Val) else 2))
    if s.shape[-1] < 2 or s.size > MAX_ELEMENTS:
        raise GeneratorSkip("add result unsuitable")
    for _ in range(2):
        (_m_layernorm if b.chance(0.6) else _m_layernorm_spelled)(b, s)
    if b.chance(0.3):
        b.forced_outputs.append(s)
    b.patterns["add_two_layernorms"] += 1


def _m_softmax(b: _Builder) -> None:
    x = b.pick(max_mag=1e3)
    if x.rank == 0:
        raise GeneratorSkip("scalar")
    axis = int(b.rng.integers(-x.rank, x.rank)) if b.chance(0.4) and not b.rowwise else -1
    op = "Softmax" if b.chance(0.8) else "LogSoftmax"
    if b.chance(0.3):
        x = b.emit("Mul", [x, b.scalar(b.pconst(nonzero=True))], x.shape, mag=x.mag * 3)
    mag = 1.0 if op == "Softmax" else x.mag * 2 + 10
    b.emit(op, [x], x.shape, exact=False, mag=mag, axis=axis)


def _m_attention_block(b: _Builder) -> None:
    """The attention block, whose head views are rank 4 in any profile."""
    b.high_rank_ok = True
    start = len(b.pool)
    try:
        _m_attention(b)
    finally:
        b.high_rank_ok = False
    if b.rowwise:  # head views, scores and mask terms mix or move the positions: not for later motifs
        lead = b.run_shapes[0]
        b.pool[start:] = [v for v in b.pool[start:] if v.rank == 3 and v.shape[:2] == lead]


def _m_attention(b: _Builder) -> None:
    """A BERT-style self-attention block over a new [B, S, D] input with an int64 attention mask."""
    dm = b.p.attention_width
    heads = b.choice([h for h in (1, 2, 4) if dm % h == 0] if b.p.name == "full" else [2])  # QUICK: one kernel
    hd = dm // heads
    bsz, seq = int(b.choice(b.p.batches)), int(b.choice(b.p.seqs + (7,)))
    if b.rowwise:
        bsz, seq = b.run_shapes[0]
    x = b.graph_input((bsz, seq, dm), hint="hidden")
    mask = b.graph_input((bsz, seq), I64, high=2, hint="mask", mask=True)
    zero = 0 if b.rowwise else None  # bucketed: reshapes copy the batch / sequence sizes (0)

    def head_view(v: Val, key: bool) -> Val:
        spec = [bsz, seq, heads, hd] if b.chance(0.5) and zero is None else [0, 0, heads, hd]
        r = b.emit("Reshape", [v, b.ints(spec)], (bsz, seq, heads, hd))
        if key and b.chance(0.5):
            return b.emit("Transpose", [r], (bsz, heads, hd, seq), perm=[0, 2, 3, 1])
        t = b.emit("Transpose", [r], (bsz, heads, seq, hd), perm=[0, 2, 1, 3])
        if key:
            return b.emit("Transpose", [t], (bsz, heads, hd, seq), perm=[0, 1, 3, 2])
        return t

    # int8 Q, K, V products may merge into one; bucketed: no DynamicQuantizeLinear (its scale spans the padding)
    mode = b.choice(["fp32", "fp32", "qdq"] if b.rowwise else ["fp32", "fp32", "dynamic", "qdq"])
    b.patterns[f"attention_{mode}"] += 1
    if mode == "dynamic":
        dql = _dql(b, x)
        proj = [b.bias(_dynamic_product(b, dql, dm)) for _ in range(3)]
    elif mode == "qdq":
        dq = _qdq_activation(b, x)
        proj = [b.bias(_qdq_product(b, dq, dm)) for _ in range(3)]
    else:
        proj = [b.bias(b.product(x, dm, tie=False)) for _ in range(3)]
    for p in proj:
        p.internal = True
    q, k, v = head_view(proj[0], False), head_view(proj[1], True), head_view(proj[2], False)
    scale = 1.0 / math.sqrt(hd)
    if b.chance(0.3):
        q = b.emit("Mul", [q, b.scalar(scale)], q.shape)
        scores = b.emit("MatMul", [q, k], (bsz, heads, seq, seq), exact=False, mag=10.0)
    else:
        scores = b.emit("MatMul", [q, k], (bsz, heads, seq, seq), exact=False, mag=10.0)
        scores = b.emit("Div", [scores, b.scalar(math.sqrt(hd))], scores.shape, mag=10.0) if b.chance(0.6) else \
            b.emit("Mul", [scores, b.scalar(scale)], scores.shape, mag=10.0)
    spelling = b.choice(["times_-10000", "finfo_min", "where_-inf"] if b.p.name == "full" else ["times_-10000"])
    b.patterns[f"mask_{spelling}"] += 1
    if spelling == "where_-inf":  # dynamo: Where(mask == 0, -inf, 0) added to the scores
        keep = b.emit("Equal", [mask, b.const(np.array(0, np.int64))], mask.shape, BOOL, exact=True, mag=1.0)
        neg = b.emit("Where", [keep, b.scalar(-np.inf), b.scalar(0.0)], mask.shape, exact=True, mag=1e4)
    else:
        mf = b.emit("Cast", [mask], mask.shape, exact=True, mag=1.0, to=TensorProto.FLOAT)
        inv = b.emit("Sub", [b.scalar(1.0), mf], mask.shape, exact=True, mag=1.0)
        big = -10000.0 if spelling == "times_-10000" else float(np.finfo(np.float32).min)
        neg = b.emit("Mul", [inv, b.scalar(big)], mask.shape, exact=True, mag=1e4)
    ext = b.emit("Unsqueeze", [neg, b.ints([1, 2])], (bsz, 1, 1, seq), exact=True, mag=1e4)
    scores = b.emit("Add", [scores, ext] if b.chance(0.8) else [ext, scores], scores.shape, mag=1e4, peak=10.0)
    probs = b.emit("Softmax", [scores], scores.shape, mag=1.0, peak=10.0, axis=-1)
    if b.chance(0.3):
        nan = b.emit("IsNaN", [probs], probs.shape, BOOL, mag=1.0)
        probs = b.emit("Where", [nan, b.scalar(0.0), probs], probs.shape, mag=1.0)
    ctx = b.emit("MatMul", [probs, v], (bsz, heads, seq, hd), exact=False, mag=x.mag * 3)
    ctx = b.emit("Transpose", [ctx], (bsz, seq, heads, hd), perm=[0, 2, 1, 3])
    spec = [bsz, seq, dm] if b.chance(0.5) and zero is None else [0, 0, -1]
    out = b.emit("Reshape", [ctx, b.ints(spec)], (bsz, seq, dm))
    b.patterns["attention"] += 1
    b.epilogue(b.product(out, dm, tie=False), p_act=0.0, p_res=0.5)


def _m_transpose(b: _Builder) -> None:
    x = b.pick(lambda v: v.rank >= 2, dtype=None)
    perm = [int(p) for p in b.rng.permutation(x.rank)]
    attrs = {} if perm == list(range(x.rank))[::-1] and b.chance(0.5) else {"perm": perm}
    b.emit("Transpose", [x], tuple(x.shape[p] for p in perm), x.dtype, mag=x.mag, **attrs)


def _reshape_target(b: _Builder, shape: tuple[int, ...]) -> tuple[int, ...]:
    s = list(shape)
    r = b.rng.random()
    if r < 0.25 and len(s) >= 2:  # merge two adjacent dims
        i = int(b.rng.integers(len(s) - 1))
        return tuple(s[:i] + [s[i] * s[i + 1]] + s[i + 2:])
    if r < 0.5:  # split a composite dim
        for i in b.rng.permutation(len(s)):
            f = [d for d in range(2, s[i]) if s[i] % d == 0]
            if f:
                d = int(b.choice(f))
                return tuple(s[:i] + [d, s[i] // d] + s[i + 1:])
    if r < 0.7 and len(s) < 4:  # insert a 1
        i = int(b.rng.integers(len(s) + 1))
        return tuple(s[:i] + [1] + s[i:])
    if r < 0.85 and 1 in s:  # drop a 1
        i = s.index(1)
        return tuple(s[:i] + s[i + 1:])
    return (int(np.prod(s)),) if b.chance(0.5) or len(s) < 2 else (-1, s[-1])


def _m_reshape(b: _Builder) -> None:
    x = b.pick(lambda v: v.rank >= 1, dtype=None)
    target = _reshape_target(b, x.shape)
    if -1 in target:
        real = (x.size // target[1], target[1])
    else:
        real = target
    spec = list(target)
    if -1 not in spec and b.chance(0.3):
        spec[int(b.rng.integers(len(spec)))] = -1
    for i in range(min(len(spec), x.rank)):  # 0 copies the input's dim (allowzero=0)
        if spec[i] == x.shape[i] and b.chance(0.3):
            spec[i] = 0
    b.emit("Reshape", [x, b.ints(spec)], real, x.dtype, mag=x.mag)


def _m_concat(b: _Builder) -> None:
    x = b.pick(lambda v: v.rank >= 1, dtype=None)
    axis = int(b.rng.integers(-x.rank, x.rank))
    ax = axis % x.rank
    parts: list[Val | str] = [x]
    for _ in range(int(b.rng.integers(1, 3))):
        def fits(v: Val) -> bool:
            return (v.rank == x.rank and v.dtype == x.dtype
                    and all(v.shape[i] == x.shape[i] for i in range(x.rank) if i != ax))

        try:
            other: Val | str = b.pick(fits, dtype=x.dtype)
        except GeneratorSkip:
            shape = list(x.shape)
            shape[ax] = int(b.choice([1, 2, 3]))
            if x.dtype == F32:
                other = b.const(b.rng.standard_normal(shape).astype(np.float32), "cat")
            elif x.dtype == BOOL:
                other = b.const(b.rng.random(shape) < 0.5, "cat")
            else:
                other = b.const(b.rng.integers(0, 3, shape).astype(x.dtype), "cat")
        parts.append(other)
    b.rng.shuffle(parts)  # type: ignore[arg-type]
    total = 0
    for p in parts:
        total += p.shape[ax] if isinstance(p, Val) else b.const_shapes[p][ax]
    shape = tuple(total if i == ax else d for i, d in enumerate(x.shape))
    if int(np.prod(shape)) > MAX_ELEMENTS:
        raise GeneratorSkip("concat too large")
    mag = max(v.mag if isinstance(v, Val) else 4.0 for v in parts)
    b.emit("Concat", parts, shape, x.dtype, mag=mag, axis=axis)


def slice_len(n: int, start: int, end: int, step: int) -> int:
    """Length of ONNX Slice along one axis of size n (the spec's clamping, not Python's)."""
    if start < 0:
        start += n
    if end < 0:
        end += n
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
        return max(0, -(-(end - start) // step))
    start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return max(0, -(-(start - end) // -step))


def _m_slice(b: _Builder) -> None:
    x = b.pick(lambda v: v.rank >= 1 and min(v.shape) >= 1, dtype=None)
    naxes = int(b.rng.integers(1, min(2, x.rank) + 1))
    axes = [int(a) for a in b.rng.choice(x.rank, naxes, replace=False)]
    starts, ends, steps = [], [], []
    shape = list(x.shape)
    for a in axes:
        n = x.shape[a]
        step = int(b.choice([1, 1, 1, 2, -1, -2] if b.p.name == "full" else [1, 1, 2, -1]))
        for _ in range(20):
            big = [INT64_MAX, INT64_MIN, n + 3, -n - 3]
            start = int(b.rng.integers(-n, n)) if b.chance(0.8) else int(b.choice(big))
            end = int(b.rng.integers(-n, n + 1)) if b.chance(0.7) else int(b.choice(big))
            if step < 0 and end == INT64_MAX:  # onnxruntime reads it as "to the beginning", not as the spec's n - 1
                continue
            if step < 0 and start < -n and x.const and "slice_fold_before_start" in KNOWN_BUGS:
                continue
            if slice_len(n, start, end, step) > 0 or (b.p.name == "full" and b.chance(0.02)):
                break
        else:
            start, end = (0, n) if step > 0 else (n - 1, INT64_MIN)
        starts.append(start)
        ends.append(end)
        steps.append(step)
        shape[a] = slice_len(n, start, end, step)
    inputs: list[Val | str] = [x, b.ints(starts), b.ints(ends)]
    neg_axes = [a - x.rank if b.chance(0.3) else a for a in axes]
    if steps != [1] * len(steps) or b.chance(0.7):
        inputs.append(b.ints(neg_axes))
        if steps != [1] * len(steps) or b.chance(0.5):
            inputs.append(b.ints(steps))
    elif axes != list(range(len(axes))):  # omitted axes mean 0, 1, ... in order
        inputs.append(b.ints(neg_axes))
    b.patterns["slice_edge" if any(abs(v) > 1 << 40 for v in starts + ends) else "slice"] += 1
    b.emit("Slice", inputs, tuple(shape), x.dtype, mag=x.mag)


def _m_gather(b: _Builder) -> None:
    r = b.rng.random()
    if r < 0.3:  # embedding lookup: constant table [V, D], int64 ids from a graph input
        d = int(b.choice(b.gemm_widths()))
        vocab = int(b.choice([5, 11]))
        try:
            ids = b.pick(lambda v: v.is_input and 0 < v.mag <= vocab and v.rank >= 1, dtype=I64)
        except GeneratorSkip:
            ids = b.graph_input((int(b.choice(b.p.batches)), int(b.choice(b.p.seqs))), I64, high=vocab, hint="ids")
        table = b.const(b.rng.standard_normal((vocab, d)).astype(np.float32), "emb")
        b.patterns["embedding"] += 1
        b.emit("Gather", [table, ids], ids.shape + (d,), exact=True, mag=4.0)
        return
    x = b.pick(lambda v: v.rank >= 1, dtype=None)
    axis = int(b.rng.integers(-x.rank, x.rank))
    n = x.shape[axis]
    if r < 0.45:  # indices computed: Mod(int value, n) lands in [0, n)
        i = _int_source(b)
        idx: Val | str = b.emit("Mod", [i, b.const(np.array(n, np.int64))], i.shape, I64, exact=True, mag=n)
        ishape = i.shape
    else:
        ishape = b.choice([(), (int(b.rng.integers(1, 4)),), (2, 2)])
        idx = b.const(b.rng.integers(-n, n, ishape).astype(np.int64), "idx")
    ax = axis % x.rank
    shape = x.shape[:ax] + tuple(ishape) + x.shape[ax + 1:]
    if int(np.prod(shape)) > MAX_ELEMENTS:
        raise GeneratorSkip("gather too large")
    b.emit("Gather", [x, idx], shape, x.dtype, mag=x.mag, **({"axis": axis} if axis or b.chance(0.5) else {}))


def _m_squeeze_unsqueeze(b: _Builder) -> None:
    x = b.pick(lambda v: v.rank <= 4, dtype=None)
    if 1 in x.shape and b.chance(0.5):
        ones = [i for i, d in enumerate(x.shape) if d == 1]
        axes = sorted(int(a) for a in b.rng.choice(ones, int(b.rng.integers(1, len(ones) + 1)), replace=False))
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        if b.chance(0.2) and len(axes) == len(ones):
            b.emit("Squeeze", [x], shape, x.dtype, mag=x.mag)
        else:
            spec = [a - x.rank if b.chance(0.4) else a for a in axes]
            b.emit("Squeeze", [x, b.ints(spec)], shape, x.dtype, mag=x.mag)
        return
    if x.rank >= 4:
        raise GeneratorSkip("rank")
    out_rank = x.rank + 1
    a = int(b.rng.integers(-out_rank, out_rank))
    pos = a % out_rank
    shape = x.shape[:pos] + (1,) + x.shape[pos:]
    b.emit("Unsqueeze", [x, b.ints([a])], shape, x.dtype, mag=x.mag)


def _m_expand(b: _Builder) -> None:
    x = b.pick(lambda v: v.rank <= 3, dtype=None)
    spec = [int(b.choice([1, 2, 3])) if d == 1 else (1 if b.chance(0.3) else d) for d in x.shape]
    if b.chance(0.4) or not spec:  # more dims than the input (rank difference)
        spec = [int(b.choice([1, 2]))] + spec
    if len(spec) > 1 and b.chance(0.2):  # the shape given shorter than the input's rank
        spec = spec[1:]
    shape = tuple(int(d) for d in np.broadcast_shapes(x.shape, tuple(spec)))
    if int(np.prod(shape)) > MAX_ELEMENTS:
        raise GeneratorSkip("expand too large")
    b.emit("Expand", [x, b.ints(spec)], shape, x.dtype, mag=x.mag)


def _m_split(b: _Builder) -> None:
    x = b.pick(lambda v: v.rank >= 1 and max(v.shape) >= 2, dtype=None)
    axes = [i for i, d in enumerate(x.shape) if d >= 2]
    ax = int(b.choice(axes))
    n = x.shape[ax]
    cut = int(b.rng.integers(1, n))
    sizes = [cut, n - cut]
    outs = [(tuple(s if i == ax else d for i, d in enumerate(x.shape)), x.dtype) for s in sizes]
    axis = ax - x.rank if b.chance(0.3) else ax
    b.emit_multi("Split", [x, b.ints(sizes)], outs, exact=x.exact, mag=x.mag, axis=axis)


def _m_flatten(b: _Builder) -> None:
    x = b.pick(lambda v: v.rank >= 2, dtype=None)
    axis = int(b.rng.integers(0, x.rank + 1))
    shape = (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))
    b.emit("Flatten", [x], shape, x.dtype, mag=x.mag, axis=axis)


def _m_identity(b: _Builder) -> None:
    x = b.pick(dtype=None)
    y = b.emit("Identity", [x], x.shape, x.dtype, mag=x.mag)
    if b.chance(0.5):
        b.forced_outputs.append(y)
        b.patterns["identity_output"] += 1


def _m_reduce(b: _Builder) -> None:
    x = b.pick(lambda v: v.rank >= 1, max_mag=1e3)
    ops = ["ReduceMean", "ReduceSum", "ReduceMax"] + (
        ["ReduceMin", "ReduceL2", "ReduceL1", "ReduceSumSquare", "ReduceLogSumExp", "ReduceProd"]
        if b.p.name == "full" else [])
    op = b.choice(ops)
    if op == "ReduceProd":
        x = b.emit("Tanh", [x], x.shape, mag=1.0)
    keep = int(b.chance(0.6))
    all_axes = b.chance(0.1)
    axes = [] if all_axes else sorted(int(a) for a in b.rng.choice(
        x.rank, int(b.rng.integers(1, x.rank + 1)), replace=False))
    red = set(range(x.rank)) if all_axes else set(axes)
    shape = tuple(1 if i in red else d for i, d in enumerate(x.shape)) if keep else tuple(
        d for i, d in enumerate(x.shape) if i not in red)
    spec = [a - x.rank if b.chance(0.4) else a for a in axes]
    count = int(np.prod([x.shape[i] for i in red])) if red else 1
    mag = {"ReduceSum": x.mag * count, "ReduceL1": x.mag * count, "ReduceSumSquare": x.mag ** 2 * count,
           "ReduceL2": x.mag * math.sqrt(count), "ReduceLogSumExp": x.mag + math.log(count + 1)}.get(op, x.mag)
    exact = x.exact and op in ("ReduceMax", "ReduceMin")
    attrs: dict[str, object] = {} if keep and b.chance(0.5) else {"keepdims": keep}
    if op == "ReduceSum":
        inputs: list[Val | str] = [x, b.ints(spec)] if axes else [x]
        b.emit(op, inputs, shape, exact=exact, mag=mag, **attrs)
    else:
        if axes:
            attrs["axes"] = spec
        b.emit(op, [x], shape, exact=exact, mag=mag, **attrs)


def _m_argmax(b: _Builder) -> None:
    x = b.exact_float()
    axis = int(b.rng.integers(-x.rank, x.rank))
    keep = int(b.chance(0.5))
    shape = tuple(1 if i == axis % x.rank else d for i, d in enumerate(x.shape)) if keep else tuple(
        d for i, d in enumerate(x.shape) if i != axis % x.rank)
    op = b.choice(["ArgMax", "ArgMin"])
    b.emit(op, [x], shape, I64, exact=True, mag=float(x.shape[axis]), axis=axis, keepdims=keep,
           select_last_index=int(b.chance(0.3)))


def _m_cumsum(b: _Builder) -> None:
    x = b.pick(lambda v: v.rank >= 1, max_mag=100.0)
    axis = int(b.rng.integers(-x.rank, x.rank))
    n = x.shape[axis]
    b.emit("CumSum", [x, b.const(np.array(axis, np.int64))], x.shape, exact=False, mag=x.mag * n,
           exclusive=int(b.chance(0.3)), reverse=int(b.chance(0.3)))


def _act_qparams(b: _Builder, x: Val, signed: bool) -> tuple[float, int]:
    """(scale, zero point) covering roughly ±x.mag, sometimes off-centre or too small (saturation)."""
    span = max(x.mag, 0.5) * float(b.choice([1.0, 1.0, 0.5]))
    scale = float(np.float32(2.0 * span / 255.0))
    if signed:
        return scale, int(b.choice([0, 0, 3, -5]))
    return scale, int(b.choice([128, 128, 120, 0]))


def _int8_weight(b: _Builder, k: int, n: int) -> tuple[list[str], dict[str, int]]:
    """A constant 8-bit [k, n] weight: its (DequantizeLinear / MatMulInteger) input names [W_q, scale,
    zero point?] and DequantizeLinear attributes. int8 symmetric or uint8 around 128, per tensor or per
    output column; now and then an earlier weight of the same shape again (tied weights)."""
    tied = [w for w in b.int8_weights if w[2] == (k, n)]
    if tied and b.chance(0.2):
        b.patterns["tied_int8_weight"] += 1
        names, attrs, _ = tied[int(b.rng.integers(len(tied)))]
        return list(names), dict(attrs)
    signed = b.chance(0.8)
    per_channel = b.chance(0.3)
    wq = b.rng.integers(-127, 128, (k, n)).astype(np.int8) if signed else b.rng.integers(0, 256, (k, n)).astype(
        np.uint8)
    s_shape = (n,) if per_channel else ()
    ws = (b.rng.uniform(0.5, 1.5, s_shape) / (127.0 * math.sqrt(k))).astype(np.float32)
    names = [b.const(wq, "wq"), b.const(ws, "ws")]
    if not signed or b.chance(0.5):
        names.append(b.const(np.zeros(s_shape, np.int8) if signed else np.full(s_shape, 128, np.uint8), "wz"))
    attrs = {"axis": 1} if per_channel else {}
    b.int8_weights.append((tuple(names), attrs, (k, n)))
    return names, attrs


def _qdq_activation(b: _Builder, x: Val) -> Val:
    """DequantizeLinear(QuantizeLinear(x)) per tensor, u8 or s8 (quantize_static's activation form)."""
    signed = b.chance(0.5)
    scale, zero = _act_qparams(b, x, signed)
    s_name = b.scalar(scale, qparam=True)
    z_name = b.const(np.array(zero, np.int8 if signed else np.uint8), "az")
    q = b.emit("QuantizeLinear", [x, s_name, z_name], x.shape, I8 if signed else U8, exact=x.exact, mag=255.0,
               internal=True)
    q.loose = q.loose or not x.exact
    b.patterns["qdq_s8" if signed else "qdq_u8"] += 1
    return b.emit("DequantizeLinear", [q, s_name, z_name], x.shape, exact=False, mag=x.mag + scale * 256)


def _qdq_product(b: _Builder, dq: Val, n: int) -> Val:
    """dq @ DequantizeLinear(W_q) (the weight's DequantizeLinear folds at compile time)."""
    names, attrs = _int8_weight(b, dq.shape[-1], n)
    w = b.name("wdq")
    b.nodes.append(oh.make_node("DequantizeLinear", names, [w], **attrs))
    b.ops["DequantizeLinear"] += 1
    return b.emit("MatMul", [dq, w], dq.shape[:-1] + (n,), exact=False, mag=dq.mag * 1.5 + 1)


def _dql(b: _Builder, x: Val) -> tuple[Val, Val, Val]:
    """DynamicQuantizeLinear(x): (uint8 values, scale, zero point), kept out of the pool."""
    outs = b.emit_multi("DynamicQuantizeLinear", [x], [(x.shape, U8), ((), F32), ((), U8)], exact=x.exact, mag=255.0)
    for v in outs:
        v.loose = v.loose or not x.exact
        b.pool.remove(v)
    return outs[0], outs[1], outs[2]


def _dynamic_product(b: _Builder, dql: tuple[Val, Val, Val], n: int) -> Val:
    """MatMulInteger(x_q, W_q, x_zero[, w_zero]) -> Cast(float) -> Mul(., x_scale * w_scale)."""
    xq, xs, xz = dql
    names, _ = _int8_weight(b, xq.shape[-1], n)
    inputs: list[Val | str] = [xq, names[0], xz] + names[2:]
    acc = b.emit("MatMulInteger", inputs, xq.shape[:-1] + (n,), I32, exact=xq.exact, mag=1e6, pool=False)
    f = b.emit("Cast", [acc], acc.shape, exact=xq.exact, mag=1e6, pool=False, to=TensorProto.FLOAT)
    s_shape = b.const_shapes[names[1]]
    scale = b.emit("Mul", [xs, names[1]] if b.chance(0.7) else [names[1], xs], s_shape, exact=False, mag=1e-3,
                   pool=False)
    b.patterns["dynamic_s8" if b.const_dtypes[names[0]] == I8 else "dynamic_u8"] += 1
    return b.emit("Mul", [f, scale] if b.chance(0.7) else [scale, f], acc.shape, exact=False, mag=4.0 * 1.5 + 1,
                  peak=8.0)


def _quantised_products(b: _Builder, quantise, product, p_bias: float, p_act: float) -> None:  # type: ignore[no-untyped-def]
    """One quantised activation feeding 1-3 products (Q, K, V) with epilogues; sometimes x quantised twice alike."""
    widths = b.gemm_widths()
    x = b.quant_input(lambda k: k in widths)
    quantised = quantise(b, x)
    count = int(b.choice([1, 1, 1, 2, 3]))
    if count > 1:
        b.patterns["shared_quant_input"] += 1
    for _ in range(count):
        b.epilogue(product(b, quantised, int(b.choice(widths))), p_bias=p_bias, p_act=p_act, p_res=0.3)
    if b.chance(0.15):
        b.patterns["quantised_twice"] += 1
        b.epilogue(product(b, quantise(b, x), int(b.choice(widths))), p_act=0.0)


def _m_qdq_matmul(b: _Builder) -> None:
    """DequantizeLinear(QuantizeLinear(x)) @ DequantizeLinear(W_q), + epilogue: quantize_static's QDQ form."""
    _quantised_products(b, _qdq_activation, _qdq_product, p_bias=0.7, p_act=0.35)


def _m_dynamic_matmul(b: _Builder) -> None:
    """DynamicQuantizeLinear + MatMulInteger + Cast + Mul(scale product) (+ bias): quantize_dynamic's form."""
    _quantised_products(b, _dql, _dynamic_product, p_bias=0.8, p_act=0.3)


def _m_fake_quant(b: _Builder) -> None:
    """QuantizeLinear -> DequantizeLinear on an activation (per tensor): one fused elementwise kernel."""
    x = b.quant_input(lambda k: True) if b.chance(0.7) else b.exact_float()
    signed = b.chance(0.5)
    scale, zero = _act_qparams(b, x, signed)
    s_name, z_name = b.scalar(scale, qparam=True), b.const(np.array(zero, np.int8 if signed else np.uint8), "az")
    q = b.emit("QuantizeLinear", [x, s_name, z_name], x.shape, I8 if signed else U8, exact=x.exact, mag=255.0)
    q.loose = q.loose or not x.exact
    b.emit("DequantizeLinear", [q, s_name, z_name], x.shape, exact=False, mag=x.mag + 256 * scale)
    b.patterns["fake_quant"] += 1


def _m_weight_as_data(b: _Builder) -> None:
    """An fp32 MatMul weight that is data as well: rows gathered (tied embeddings), its transpose as the
    weight of another product (tied output projection), or returned as a graph output."""
    if not b.fp32_weights:
        raise GeneratorSkip("no weight yet")
    name, (k, n) = b.fp32_weights[int(b.rng.integers(len(b.fp32_weights)))]
    r = b.rng.random()
    b.patterns["weight_as_data"] += 1
    if r < 0.4:
        idx = b.const(b.rng.integers(-k, k, (int(b.rng.integers(1, 4)),)).astype(np.int64), "idx")
        b.emit("Gather", [name, idx], (b.const_shapes[idx][0], n), exact=True, mag=2.0)
    elif r < 0.75:
        x = b.pick(lambda v: v.rank >= 2 and v.shape[-1] == n, max_mag=50.0)
        wt = b.emit("Transpose", [name], (n, k), exact=True, mag=2.0, pool=False, perm=[1, 0])
        b.epilogue(b.emit("MatMul", [x, wt], x.shape[:-1] + (k,), exact=False, mag=x.mag * 1.5 + 1), p_res=0.2)
    else:
        b.forced_outputs.append(b.emit("Identity", [name], (k, n), exact=True, mag=2.0))
        b.patterns["constant_output"] += 1


def _m_const_fold(b: _Builder) -> None:
    """Constants-only subgraphs, folded at compile time: a scaled weight, a bias made of two, a returned
    constant."""
    r = b.rng.random()
    b.patterns["const_fold"] += 1
    widths = b.gemm_widths()
    if r < 0.6:
        x = b.pick(lambda v: v.rank >= 2 and v.shape[-1] in widths, max_mag=50.0)
        k, n = x.shape[-1], int(b.choice(widths))
        w = b.const(b.weights((k, n), k), "w")
        ws = b.emit("Mul", [w, b.scalar(b.pconst(nonzero=True))], (k, n), exact=True, mag=2.0, pool=False)
        y = b.emit("MatMul", [x, ws], x.shape[:-1] + (n,), exact=False, mag=x.mag * 3 + 1)
        b1, b2 = (b.const(b.rng.standard_normal((n,)).astype(np.float32), "bias") for _ in range(2))
        bsum = b.emit("Add", [b1, b2], (n,), exact=True, mag=4.0, pool=False)
        b.epilogue(b.emit("Add", [y, bsum], y.shape, mag=y.mag + 4), p_bias=0.0)
    else:
        c = b.const(b.rng.standard_normal(b.choice([(3,), (2, 17), (1,)])).astype(np.float32), "c")
        v = b.emit(b.choice(["Relu", "Neg", "Identity"]), [c], b.const_shapes[c], exact=True, mag=4.0)
        b.forced_outputs.append(v)
        b.patterns["constant_output"] += 1


def _m_duplicate(b: _Builder) -> None:
    """An earlier node once more, same inputs and attributes (a common-subexpression candidate)."""
    cands = [(node, b.vals[node.output[0]]) for node in b.nodes
             if len(node.output) == 1 and node.output[0] in b.vals and b.vals[node.output[0]] in b.pool]
    if not cands:
        raise GeneratorSkip("nothing to repeat")
    node, val = cands[int(b.rng.integers(len(cands)))]
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.output[0] = b.name(node.op_type.lower())
    b.nodes.append(copy)
    b.ops[node.op_type] += 1
    for name in node.input:
        if name in b.vals:
            b.vals[name].uses += 1
    dup = Val(copy.output[0], val.shape, val.dtype, exact=val.exact, mag=val.mag, peak=val.peak, loose=val.loose,
              const=val.const)
    b.vals[dup.name] = dup
    b.pool.append(dup)
    b.patterns["duplicate_node"] += 1


def _m_qlinear_matmul(b: _Builder) -> None:
    """QuantizeLinear -> QLinearMatMul (constant 8-bit weight, or two quantised activations) ->
    DequantizeLinear: quantize_static's QOperator form. Bit-exact in both engines (integer sums,
    one requantising multiply), so the dequantised result is held to the float tolerance."""
    widths = b.gemm_widths()
    x = b.pick(lambda v: v.exact and v.rank >= 2 and v.shape[-1] in widths, max_mag=50.0)
    k = x.shape[-1]
    signed = b.chance(0.5)
    sa, za = _act_qparams(b, x, signed)
    qdt, zdt = (I8, np.int8) if signed else (U8, np.uint8)
    sa_n, za_n = b.scalar(sa, qparam=True), b.const(np.array(za, zdt), "az")
    xq = b.emit("QuantizeLinear", [x, sa_n, za_n], x.shape, qdt, exact=True, mag=255.0)
    if b.chance(0.6) or b.rowwise:  # constant weight, per tensor or per column
        n = int(b.choice(widths))
        w_signed = signed or b.chance(0.7)  # onnxruntime has no int8 x uint8 kernel
        wq = b.rng.integers(-127, 128, (k, n)).astype(np.int8) if w_signed else b.rng.integers(
            0, 256, (k, n)).astype(np.uint8)
        s_shape = (n,) if b.chance(0.3) else ()
        ws = (b.rng.uniform(0.5, 1.5, s_shape) / (127.0 * math.sqrt(k))).astype(np.float32)
        wz = np.zeros(s_shape, np.int8) if w_signed else np.full(s_shape, 128, np.uint8)
        bq: Val | str = b.const(wq, "wq")
        sb_n, zb_n = b.const(ws, "ws"), b.const(wz, "wz")
        out_shape = x.shape[:-1] + (n,)
        y_mag = x.mag * 1.5 + 1
        b.patterns["qlinear_matmul_weight"] += 1
    else:  # two activations: x_q @ Quantize(transpose(c)) with c [..., M', K] exact
        c = b.pick(lambda v: v.exact and v.rank == x.rank and v.shape[-1] == k and v.shape[:-2] == x.shape[:-2],
                   max_mag=50.0)
        perm = list(range(c.rank - 2)) + [c.rank - 1, c.rank - 2]
        ct = b.emit("Transpose", [c], tuple(c.shape[p] for p in perm), perm=perm)
        sb, zb = _act_qparams(b, ct, signed)
        sb_n, zb_n = b.scalar(sb, qparam=True), b.const(np.array(zb, zdt), "bz")
        bq = b.emit("QuantizeLinear", [ct, sb_n, zb_n], ct.shape, qdt, exact=True, mag=255.0)
        out_shape = x.shape[:-1] + (ct.shape[-1],)
        y_mag = x.mag * c.mag * math.sqrt(k)
        b.patterns["qlinear_matmul_activations"] += 1
    sy = float(np.float32(2.0 * y_mag / 255.0))
    zy = 0 if signed else 128
    sy_n, zy_n = b.scalar(sy, qparam=True), b.const(np.array(zy, zdt), "yz")
    yq = b.emit("QLinearMatMul", [xq, sa_n, za_n, bq, sb_n, zb_n, sy_n, zy_n], out_shape, qdt, exact=True,
                mag=255.0)
    b.emit("DequantizeLinear", [yq, sy_n, zy_n], out_shape, exact=False, mag=y_mag, peak=y_mag)


def _m_long_chain(b: _Builder) -> None:
    """Many elementwise ops in a row, each with its own operand: one fused kernel with many inputs."""
    x = b.pick(max_mag=10.0)
    for _ in range(int(b.rng.integers(5, 13))):
        if b.chance(0.35):
            x = b.unary(b.choice(["Tanh", "Sigmoid", "Relu", "Neg", "Abs", "Erf"]), x)
        else:
            x = b.binary(b.choice(["Add", "Sub", "Mul", "Max", "Min"]), x, b.operand(x))
        if x.mag > 1e3:
            x = b.unary("Tanh", x)
    b.patterns["long_chain"] += 1


def _m_degenerate_quant(b: _Builder) -> None:
    """Quantising a tensor of one value (zeros, or a constant): zero range, the scale formula's edge."""
    widths = b.gemm_widths()
    x = b.pick(lambda v: v.rank >= 2 and v.shape[-1] in widths and v.exact, max_mag=50.0)
    z = b.emit("Mul", [x, b.scalar(0.0)], x.shape, exact=True, mag=0.0)
    if b.chance(0.5):
        z = b.emit("Add", [z, b.scalar(b.pconst())], x.shape, exact=True, mag=4.0)
    b.patterns["degenerate_quant"] += 1
    if b.chance(0.5):
        b.epilogue(_dynamic_product(b, _dql(b, z), int(b.choice(widths))), p_act=0.0)
    else:
        b.epilogue(_qdq_product(b, _qdq_activation(b, z), int(b.choice(widths))), p_act=0.0)


def _m_rw_reduce(b: _Builder) -> None:
    """A reduction over the last axis, dimensions kept: per position, so padding never enters it."""
    x = b.pick(lambda v: v.rank >= 2 and v.shape[-1] > 1, max_mag=1e3)
    op = b.choice(["ReduceMean", "ReduceSum", "ReduceMax"])
    shape = x.shape[:-1] + (1,)
    if op == "ReduceSum":
        b.emit(op, [x, b.ints([-1])], shape, exact=False, mag=x.mag * x.shape[-1])
    else:
        b.emit(op, [x], shape, exact=op == "ReduceMax" and x.exact, mag=x.mag, axes=[-1])


def _m_rw_where(b: _Builder) -> None:
    """Where(exact value > constant, x, y) with every operand on the same positions."""
    x = b.pick(max_mag=1e3)
    src = b.pick(lambda v: v.exact and v.shape[:-1] == x.shape[:-1] and v.shape[-1] in (1, x.shape[-1]))
    c = b.emit(b.choice(["Greater", "Less"]), [src, b.scalar(b.pconst())], src.shape, BOOL, exact=True, mag=1.0)
    y = b.operand(x)
    args = [c, x, y] if b.chance(0.5) else [c, y, x]
    b.emit("Where", args, b.shape_of(c, x, y), exact=x.exact and (not isinstance(y, Val) or y.exact),
           mag=max(x.mag, y.mag if isinstance(y, Val) else 4.0))


def _m_rw_cast(b: _Builder) -> None:
    x = b.exact_float()
    i = b.emit("Cast", [x], x.shape, I64, exact=True, mag=x.mag, to=TensorProto.INT64)
    b.emit("Cast", [i], x.shape, exact=True, mag=x.mag, to=TensorProto.FLOAT)


def _m_pool(b: _Builder) -> None:
    """A classification head's pooling: sequence position 0 (never padding) -> [batch, F] or [batch, 1, F]."""
    x = b.pick(lambda v: v.rank == 3)
    b.patterns["pool_first_token"] += 1
    if b.chance(0.6):
        b.emit("Gather", [x, b.const(np.array(0, np.int64), "idx")], (x.shape[0], x.shape[2]), mag=x.mag, axis=1)
    else:
        b.emit("Slice", [x, b.ints([0]), b.ints([1]), b.ints([1])], (x.shape[0], 1, x.shape[2]), mag=x.mag)


def _m_residual_output(b: _Builder) -> None:
    """A residual Add that is a graph output and is consumed further (by a LayerNorm or a product)."""
    a = b.pick(lambda v: v.rank >= 2 and v.shape[-1] > 1, max_mag=100.0)
    r = b.operand(a, const_ok=False)
    s = b.emit("Add", [a, r], b.shape_of(a, r), mag=a.mag + r.mag if isinstance(r, Val) else a.mag + 2)
    b.forced_outputs.append(s)
    b.patterns["residual_output"] += 1
    if s.shape[-1] in b.gemm_widths() and b.chance(0.5):
        b.epilogue(b.product(s, s.shape[-1]))
    else:
        _m_layernorm(b, s)


MOTIFS: dict[str, Callable[[_Builder], object]] = {
    "unary": _m_unary, "binary": _m_binary, "variadic": _m_variadic, "clip": _m_clip, "where": _m_where,
    "cast": _m_cast, "int_ops": _m_int_ops, "matmul_w": _m_matmul_w, "dual_product_add": _m_dual_product_add,
    "matmul_act": _m_matmul_act, "gemm": _m_gemm, "layernorm": _m_layernorm,
    "layernorm_spelled": _m_layernorm_spelled, "add_two_layernorms": _m_add_two_layernorms,
    "softmax": _m_softmax, "attention": _m_attention_block, "transpose": _m_transpose, "reshape": _m_reshape,
    "concat": _m_concat, "slice": _m_slice, "gather": _m_gather, "squeeze_unsqueeze": _m_squeeze_unsqueeze,
    "expand": _m_expand, "split": _m_split, "flatten": _m_flatten, "identity": _m_identity,
    "reduce": _m_reduce, "argmax": _m_argmax, "cumsum": _m_cumsum, "qdq_matmul": _m_qdq_matmul,
    "dynamic_matmul": _m_dynamic_matmul, "fake_quant": _m_fake_quant, "residual_output": _m_residual_output,
    "weight_as_data": _m_weight_as_data, "const_fold": _m_const_fold, "duplicate": _m_duplicate,
    "long_chain": _m_long_chain, "degenerate_quant": _m_degenerate_quant, "qlinear_matmul": _m_qlinear_matmul,
    "rw_reduce": _m_rw_reduce, "rw_where": _m_rw_where, "rw_cast": _m_rw_cast, "pool": _m_pool,
}


# ----------------------------------------------------------------------------------------------
# generation


def _start_rowwise(b: _Builder) -> tuple[int, list[int]]:
    """Bucketed: inputs [batch, seq, D] (and int64 ids [batch, seq] looked up in an embedding); feeds of
    several (batch, seq) sizes, padded by the engine into buckets (batch, short seq) and (batch, long seq)."""
    bsz, long = int(b.choice(b.p.batches)), int(b.choice(b.p.seqs))
    short = int(b.choice([2, 3]))
    b.run_shapes = [(bsz, long), (1, short - 1), (max(bsz - 1, 1), short + 1), (bsz, short)]
    d = int(b.choice(b.gemm_widths()))
    b.graph_input((bsz, long, d))
    r = b.rng.random()
    if r < 0.3:
        b.graph_input((bsz, long, d) if b.chance(0.7) else (bsz, long, 1), hint="y")
    elif r < 0.5:
        ids = b.graph_input((bsz, long), I64, high=7, hint="ids")
        table = b.const(b.rng.standard_normal((7, d)).astype(np.float32), "emb")
        b.emit("Gather", [table, ids], (bsz, long, d), exact=True, mag=4.0)
        b.pool.remove(ids)  # [batch, seq] int64: only the embedding reads it
        b.patterns["embedding"] += 1
    return bsz, [short, long]


def _start(b: _Builder) -> None:
    """The case's graph inputs: a main [B, S, D] (or 2-D, or 4095-wide) float input and maybe more."""
    bsz, seq, d = int(b.choice(b.p.batches)), int(b.choice(b.p.seqs)), int(b.choice(b.gemm_widths()))
    if b.chance(b.p.p_wide):
        b.patterns["wide_4095"] += 1
        main = b.graph_input((int(b.choice([1, 3])), 4095))
    elif b.chance(b.p.p_2d_main):
        main = b.graph_input((bsz * seq, d))
    else:
        main = b.graph_input((bsz, seq, d))
    r = b.rng.random()
    if r < 0.35:  # a second float input of the same or a broadcastable shape
        shape = main.shape if b.chance(0.6) else b.bcast_shape(main.shape)
        if shape:
            b.graph_input(shape, hint="y")
    elif r < 0.5 and main.rank == 3:
        b.graph_input(main.shape[:2], I64, high=int(b.choice([5, 11])), hint="ids")


def _select_outputs(b: _Builder) -> list[Val]:
    """Every value nothing consumes, the forced ones, and a few intermediate values as well."""
    computed = [v for v in b.pool if not v.is_input]
    leaves = [v for v in computed if v.uses == 0]
    outs: list[Val] = []
    for v in leaves:
        if not b.chance(0.08):  # now and then a dead end: nodes whose result nobody needs
            outs.append(v)
    for v in b.forced_outputs:
        if v not in outs:
            outs.append(v)
    extra = [v for v in computed if v not in outs]
    for _ in range(int(b.rng.integers(0, 3))):
        if extra:
            v = extra.pop(int(b.rng.integers(len(extra))))
            outs.append(v)
            b.patterns["output_and_consumed"] += 1
    if not outs:
        outs = [computed[-1]]
    if b.chance(0.05):  # a graph input returned as it is
        outs.append(b.inputs[int(b.rng.integers(len(b.inputs)))])
        b.patterns["input_is_output"] += 1
    weights = [name for name, _ in b.fp32_weights]
    if weights and b.chance(0.05):  # an initializer returned as it is (here a MatMul weight the engine packs)
        name = weights[int(b.rng.integers(len(weights)))]
        outs.append(Val(name, b.const_shapes[name], F32, const=True, mag=2.0, peak=2.0))
        b.patterns["initializer_is_output"] += 1
    b.rng.shuffle(outs)  # type: ignore[arg-type]
    return outs


def generate(seed: int, profile: Profile = QUICK) -> Case:
    """The case of `seed` in `profile` (deterministic: same seed, same model and feeds)."""
    rng = np.random.default_rng([seed, 0x5EED, zlib.crc32(profile.name.encode())])
    for _attempt in range(50):
        b = _Builder(rng, profile)
        buckets = _start_rowwise(b) if profile.rowwise else None
        if not profile.rowwise:
            _start(b)
        names = [n for n, _ in profile.motif_weights]
        w = np.array([wt for _, wt in profile.motif_weights])
        n_motifs = int(rng.integers(profile.n_motifs[0], profile.n_motifs[1] + 1))
        done = 0
        for _ in range(n_motifs * 6):
            if done >= n_motifs:
                break
            motif = names[int(rng.choice(len(names), p=w / w.sum()))]
            state = _snapshot(b)
            try:
                MOTIFS[motif](b)
                b.motifs[motif] += 1
                done += 1
            except GeneratorSkip:
                _restore(b, state)
        if not any(not v.is_input for v in b.pool):
            continue
        case = _finish(b, seed, buckets)
        if case is not None:
            return case
    raise RuntimeError(f"could not generate a case for seed {seed}")


def _snapshot(b: _Builder):  # type: ignore[no-untyped-def]
    """What `_restore` needs to undo a motif that gave up half way."""
    return (len(b.nodes), len(b.inits), len(b.inputs), len(b.input_protos), len(b.pool), Counter(b.patterns),
            Counter(b.ops), len(b.forced_outputs), {v.name: (v.uses, v.internal) for v in b.pool},
            [dict(f) for f in b.feeds], len(b.fp32_weights), len(b.int8_weights), dict(b.input_kinds))


def _restore(b: _Builder, state) -> None:  # type: ignore[no-untyped-def]
    (n_nodes, n_inits, n_inputs, n_protos, n_pool, patterns, ops, n_forced, uses, feeds, n_fp32, n_int8,
     kinds) = state
    del b.nodes[n_nodes:], b.inits[n_inits:], b.inputs[n_inputs:], b.input_protos[n_protos:], b.pool[n_pool:]
    del b.forced_outputs[n_forced:], b.fp32_weights[n_fp32:], b.int8_weights[n_int8:]
    b.patterns, b.ops, b.feeds, b.input_kinds = patterns, ops, feeds, kinds
    for v in b.pool:
        v.uses, v.internal = uses[v.name]


def _output_dims(b: _Builder, v: Val) -> list[int | str]:
    """Declared output shape: concrete, or (bucketed) symbolic batch / seq axes, or now and then none."""
    if not b.rowwise or v.const:
        return list(v.shape)
    if b.chance(0.4):  # names of its own: the engine finds the batch and sequence axes by probing
        return [f"{v.name}_d{i}" for i in range(v.rank)]
    bsz, long = b.run_shapes[0]
    dims: list[int | str] = list(v.shape)
    if dims:
        dims[0] = "batch"
    if len(dims) >= 2 and v.shape[1] == long:
        dims[1] = "seq"
    return dims


def _finish(b: _Builder, seed: int, buckets: tuple[int, list[int]] | None = None) -> Case | None:
    outs = _select_outputs(b)
    graph = oh.make_graph(
        b.nodes, f"fuzz_{seed}", b.input_protos,
        [oh.make_tensor_value_info(v.name, _ONNX_TYPE[v.dtype], _output_dims(b, v)) for v in outs], b.inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)], producer_name="fuzz_graphs")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=not b.rowwise)
    if b.rowwise:  # one feed per (batch, seq) run shape
        b.feeds = [{name: b.feed_value((bb, ss) + trailing, dtype, high, mask)
                    for name, (dtype, trailing, high, mask) in b.input_kinds.items()} for bb, ss in b.run_shapes]
    return Case(
        seed=seed, profile=b.p.name, model=model, feeds=b.feeds,
        input_shapes={v.name: v.shape for v in b.inputs},
        output_shapes={v.name: v.shape for v in outs}, output_dtypes={v.name: v.dtype for v in outs},
        peaks={v.name: v.peak for v in outs}, loose={v.name for v in outs if v.loose},
        patterns=Counter(b.patterns), ops=Counter(b.ops), motifs=Counter(b.motifs), buckets=buckets)


# ----------------------------------------------------------------------------------------------
# running a case


@dataclass
class Outcome:
    """What happened to one case."""

    case: Case
    status: str  # "ok" | "mismatch" | "compile_error" | "run_error" | "unsupported" | "generator_error"
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def report(self) -> str:
        return f"{self.status}: {self.case.summary()}\n  " + "\n  ".join(self.details)


def ort_session(model: onnx.ModelProto):  # type: ignore[no-untyped-def]
    """onnxruntime on the CPU provider, graph optimisations off (the reference semantics), 1 thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def compare(name: str, got: np.ndarray, ref: np.ndarray, peak: float, loose: bool) -> str | None:
    """None if `got` matches `ref`, else what differs. Floats: |got - ref| <= ATOL + RTOL * scale, scale =
    max(max |ref|, the largest magnitude on the value's way, `peak`); `loose`: LOOSE_RTOL instead of
    RTOL. Integers and bools: equal."""
    if got.shape != ref.shape:
        return f"{name}: shape {got.shape} != onnxruntime {ref.shape}"
    if got.dtype != ref.dtype:
        return f"{name}: dtype {got.dtype} != onnxruntime {ref.dtype}"
    if ref.size == 0:
        return None
    if not np.issubdtype(ref.dtype, np.floating):
        bad = got != ref
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            return f"{name}: {int(bad.sum())}/{ref.size} elements differ, first at {i}: {got[i]} vs {ref[i]}"
        return None
    nan_ref, nan_got = np.isnan(ref), np.isnan(got)
    if (nan_ref != nan_got).any():
        return f"{name}: NaN positions differ ({int(nan_got.sum())} vs onnxruntime {int(nan_ref.sum())})"
    finite = ~nan_ref
    if (np.isinf(ref[finite]) != np.isinf(got[finite])).any() or (
            ref[finite][np.isinf(ref[finite])] != got[finite][np.isinf(ref[finite])]).any():
        return f"{name}: infinities differ"
    fin = finite & ~np.isinf(ref)
    if not fin.any():
        return None
    err = np.abs(got[fin].astype(np.float64) - ref[fin].astype(np.float64))
    scale = max(float(np.abs(ref[fin]).max()), min(peak, 1e6))
    bound = ATOL + (LOOSE_RTOL if loose else RTOL) * scale
    if float(err.max()) > bound:
        i = int(err.argmax())
        return (f"{name}: max |error| {err.max():.3g} > bound {bound:.3g} (scale {scale:.3g}; "
                f"got {got[fin][i]!r} vs onnxruntime {ref[fin][i]!r}, {int((err > bound).sum())}/{err.size} over)")
    return None


def run_case(case: Case) -> Outcome:
    """Compile `case` with sparsejit, run it and onnxruntime on both feeds, compare every output."""
    import sparsejit

    try:
        session = ort_session(case.model)
        refs = [session.run(None, feed) for feed in case.feeds]
    except Exception as exc:  # the generator made a model onnxruntime refuses: a generator bug
        return Outcome(case, "generator_error", [f"onnxruntime: {type(exc).__name__}: {exc}"])
    names = [o.name for o in session.get_outputs()]
    for name, ref in zip(names, refs[0], strict=True):
        if tuple(ref.shape) != case.output_shapes[name]:
            return Outcome(case, "generator_error",
                           [f"{name}: generator computed shape {case.output_shapes[name]}, onnxruntime {ref.shape}"])
    try:
        if case.buckets is not None:
            engine = sparsejit.compile(case.model, batch_size=case.buckets[0], sequence_length=case.buckets[1])
        else:
            engine = sparsejit.compile(case.model, input_shapes=case.input_shapes)
    except sparsejit.UnsupportedOperatorError as exc:
        return Outcome(case, "unsupported", [str(exc)])
    except Exception as exc:
        return Outcome(case, "compile_error", [f"{type(exc).__name__}: {exc}", _tail()])
    details: list[str] = []
    for run, (feed, ref) in enumerate(zip(case.feeds, refs, strict=True)):
        before = {k: v.copy() for k, v in feed.items()}
        try:
            got = engine.run(feed)
        except Exception as exc:
            return Outcome(case, "run_error", [f"run {run}: {type(exc).__name__}: {exc}", _tail()])
        for k, v in before.items():
            if not np.array_equal(v, feed[k]):
                details.append(f"run {run}: input {k} was modified")
        if list(got) != names:
            details.append(f"output names {list(got)} != {names}")
            break
        for name, r in zip(names, ref, strict=True):
            msg = compare(name, got[name], r, case.peaks[name], name in case.loose)
            if msg:
                details.append(f"run {run}: {msg}")
    return Outcome(case, "mismatch" if details else "ok", details)


def _tail() -> str:
    return "".join(traceback.format_exc().strip().splitlines(keepends=True)[-6:])


def save_case(case: Case, directory) -> str:  # type: ignore[no-untyped-def]
    """Write the model and its feeds to `directory` (case_<seed>.onnx, case_<seed>.npz); returns the path."""
    from pathlib import Path

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"case_{case.profile}_{case.seed}.onnx"
    onnx.save(case.model, str(path))
    np.savez(d / f"case_{case.profile}_{case.seed}.npz",
             **{f"feed{i}__{k}": v for i, feed in enumerate(case.feeds) for k, v in feed.items()})
    return str(path)
