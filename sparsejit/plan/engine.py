"""`Engine`: a compiled model with one plan per (batch, sequence) bucket, and `compile()`."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from sparsejit.errors import InvalidInputError, ShapeError
from sparsejit.graph.ir import Graph
from sparsejit.graph.onnx_import import ModelSource, load_onnx
from sparsejit.graph.pass_context import PassContext
from sparsejit.graph.passes import optimise
from sparsejit.graph.quant_checks import warn_on_degenerate_scales
from sparsejit.graph.specialise import fold_constants, specialise
from sparsejit.kernels.attention import HEAD_MULTIPLE
from sparsejit.kernels.simd_amx import amx_usable
from sparsejit.kernels.target import host_target
from sparsejit.kernels.threading import set_threads, thread_count
from sparsejit.plan.buckets import (
    BATCH,
    SEQ,
    Bucket,
    choose_bucket,
    input_roles,
    make_buckets,
    max_batch_for,
)
from sparsejit.plan.plan import Plan, release_weight_form
from sparsejit.plan.precision import product_kernels, resolve_precision

# Merging an attention's Q/K/V int8 products pays up to this many rows with the AVX-512 VNNI products
# (BERT-base, Zen 4: -2 to -6 % at 128 rows, +1 to +2 % at 2048) and at every size with AMX ones.
_VNNI_QKV_MERGE_MAX_ROWS = 1024


def pass_context() -> PassContext:
    """What the graph passes need to know of the kernels this machine will run."""
    amx = amx_usable()
    return PassContext(attention_head_multiple=HEAD_MULTIPLE,
                       qkv_merge_max_rows=None if amx else _VNNI_QKV_MERGE_MAX_ROWS,
                       int8_fake_quant_epilogue=not amx)  # the AMX kernel's epilogue has no roundings yet


class Engine:
    """A model compiled to one plan per bucket. Call it with a list of arrays or use `run(dict)`.

    Inputs shorter than a bucket are padded on the sequence axis (zeros, or `pad_values[name]`) and a
    smaller batch with padding rows; outputs are sliced back to the caller's batch and length.
    """

    def __init__(self, model: ModelSource, batch_size: int | Sequence[int] | None = None,
                 sequence_length: int | Sequence[int] | None = None, num_threads: int | None = None,
                 input_shapes: Mapping[str, Sequence[int]] | None = None,
                 pad_values: Mapping[str, int | float] | None = None, optimize: bool = True,
                 precision: str = "fp32", buckets: Sequence[tuple[int, int]] | None = None) -> None:
        self.requested_precision = precision
        precision = resolve_precision(precision, host_target())
        self.optimize = optimize
        self.precision = precision
        # the loaded graph is not kept: its arrays must be freed before `return_freed_memory`
        self._graph = graph = fold_constants(load_onnx(model))
        self._compiled = False  # set once every bucket is planned and the model data released
        warn_on_degenerate_scales(self._graph)
        self.num_threads = num_threads
        self.input_names = graph.input_names
        self.output_names = graph.output_names
        unknown = set(pad_values or ()) - set(self.input_names)
        if unknown:
            raise InvalidInputError(f"pad_values names unknown inputs {sorted(unknown)}; "
                                    f"inputs are {self.input_names}")
        self.pad_values = {name: (pad_values or {}).get(name, 0) for name in self.input_names}
        self._input_specs = {v.name: v for v in graph.inputs}
        self._weight_cache: dict = {}
        self._plans: dict[Bucket, Plan] = {}
        if input_shapes is not None:
            self._input_roles = {name: () for name in self.input_names}
            shapes = {name: tuple(int(d) for d in input_shapes[name]) for name in self.input_names
                      if name in input_shapes}
            missing = set(self.input_names) - set(shapes)
            if missing:
                raise ShapeError(f"input_shapes lacks {sorted(missing)}")
            self._output_roles: dict[str, tuple[str | None, ...]] = {}
            self._plans[Bucket(0, None)] = self._make_plan(shapes, last=True)
        else:
            self._input_roles = input_roles(graph.inputs)
            planned = make_buckets(graph.inputs, self._input_roles, batch_size, sequence_length, buckets)
            self._output_roles = self._find_output_roles(graph, planned[0])
            for i, bucket in enumerate(planned):
                self._plans[bucket] = self._make_plan(self._bucket_shapes(bucket), last=i == len(planned) - 1)
        self._release_compile_only_data()

    def _release_compile_only_data(self) -> None:
        """Every bucket is compiled: keep one copy of each weight, in the form its kernel reads.

        Weights kept packed or compressed by their kernels lose their unpacked copy, and the plans their
        int8 provenance records (the folded model's data went before the last bucket was lowered).
        """
        for plan in self._plans.values():
            for name in [n for n in plan.graph.initializers if release_weight_form(self._weight_cache, n)]:
                del plan.graph.initializers[name]
            plan.graph.int8_sources.clear()
        self._compiled = True  # the folded model went with the last bucket: `_make_plan` refuses now
        return_freed_memory()

    def _make_plan(self, shapes: dict[str, tuple[int, ...]], last: bool = False) -> Plan:
        if self._compiled:
            raise RuntimeError("this engine's model data was released after compiling its buckets")
        graph = specialise(self._graph, shapes)
        if self.optimize:
            graph = optimise(graph, pass_context())
        if last:  # no bucket reads the folded model again: its float32 copies of int8 weights go before packing
            self._graph.initializers.clear()
            self._graph.int8_sources.clear()
            return_freed_memory()
        label = "bucket " + "x".join(str(d) for d in next(iter(shapes.values()))) if shapes else "model"
        with thread_count(self.num_threads):  # kernels are chosen and tiled for the threads that run them
            return Plan(graph, self._weight_cache, label, self.precision, release_weights=last)

    # ---- description -------------------------------------------------------------------------
    @property
    def buckets(self) -> list[tuple[int, int | None]]:
        """The compiled (batch, sequence) shapes, smallest sequence first, then smallest batch."""
        return [(b.batch, b.sequence) for b in self._plans]  # compiled in that order (`make_buckets`)

    @property
    def batch_size(self) -> int:
        """The largest batch compiled (at any sequence length)."""
        return max(b.batch for b in self._plans)

    def max_batch(self, sequence_length: int | None = None) -> int:
        """The most rows one call of ``sequence_length`` positions may carry."""
        return max_batch_for(list(self._plans), sequence_length)

    @property
    def sequence_lengths(self) -> list[int]:
        return sorted({b.sequence for b in self._plans if b.sequence is not None})

    def input_shapes(self, bucket: tuple[int, int | None] | None = None) -> dict[str, tuple[int, ...]]:
        plan = self._plan_for(bucket)
        return {name: tuple(arr.shape) for name, arr in plan.inputs.items()}

    def output_shapes(self, bucket: tuple[int, int | None] | None = None) -> dict[str, tuple[int, ...]]:
        plan = self._plan_for(bucket)
        return {name: tuple(arr.shape) for name, arr in plan.outputs.items()}

    def input_dtypes(self) -> dict[str, np.dtype]:
        return {name: v.dtype for name, v in self._input_specs.items()}

    def describe(self) -> dict[str, object]:
        """What was compiled and for which CPU: buckets, precision, threads, the kernel family."""
        target = host_target()
        return {"inputs": self.input_names, "outputs": self.output_names, "buckets": self.buckets,
                "precision": self.precision, "precision_requested": self.requested_precision,
                "float_products": product_kernels(self.precision, target), "num_threads": self.num_threads,
                "cpu": target.cpu, "target": target.level, "kernels": target.kernel_family, "amx": amx_usable()}

    def __repr__(self) -> str:
        return (f"Engine(inputs={self.input_names}, outputs={self.output_names}, "
                f"buckets={self.buckets}, num_threads={self.num_threads})")

    # ---- running ------------------------------------------------------------------------------
    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if isinstance(inputs, Mapping):
            raise InvalidInputError("call engine(list_of_arrays) or engine.run(dict_of_arrays)")
        if len(inputs) != len(self.input_names):
            raise InvalidInputError(f"expected {len(self.input_names)} inputs {self.input_names}, "
                                    f"got {len(inputs)}")
        result = self.run(dict(zip(self.input_names, inputs, strict=True)))
        return [result[name] for name in self.output_names]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named inputs; returns named outputs (fresh arrays)."""
        arrays = self._validate(feed)
        batch, seq = self._extent(arrays)
        bucket = self._choose_bucket(batch, seq)
        plan = self._plans[bucket]
        set_threads(self.num_threads)
        with plan.lock:
            for name, arr in arrays.items():
                self._fill_input(plan.inputs[name], arr, name)
            plan.run()
            return {name: self._slice_output(plan.outputs[name], name, batch, seq).copy()
                    for name in self.output_names}

    # ---- helpers ------------------------------------------------------------------------------
    def _plan_for(self, bucket) -> Plan:
        if bucket is None:
            return next(iter(self._plans.values()))
        return self._plans[Bucket(*bucket)]

    def _bucket_shapes(self, bucket: Bucket) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for v in self._input_specs.values():
            roles = self._input_roles[v.name]
            dims = []
            for axis, dim in enumerate(v.shape or ()):
                role = roles[axis] if axis < len(roles) else None
                dims.append(bucket.batch if role == BATCH else bucket.sequence if role == SEQ else dim)
            shapes[v.name] = tuple(dims)
        return shapes

    def _validate(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(feed, Mapping):
            raise InvalidInputError("engine.run takes a dict {input name: array}")
        missing = [n for n in self.input_names if n not in feed]
        extra = [n for n in feed if n not in self._input_specs]
        if missing or extra:
            raise InvalidInputError(f"inputs must be exactly {self.input_names}; missing {missing}, "
                                    f"unexpected {extra}")
        arrays = {}
        for name in self.input_names:
            arr = np.asarray(feed[name])
            want = self._input_specs[name].dtype
            if arr.dtype != want:
                same_kind = (np.issubdtype(arr.dtype, np.integer) and np.issubdtype(want, np.integer)) or (
                    np.issubdtype(arr.dtype, np.floating) and np.issubdtype(want, np.floating)) or (
                    arr.dtype == np.bool_ and want == np.bool_)
                if not same_kind:
                    raise InvalidInputError(f"input {name!r} must be {want}, got {arr.dtype}")
                arr = arr.astype(want)
            plan_shape = next(iter(self._plans.values())).inputs[name].shape
            if arr.ndim != len(plan_shape):
                raise InvalidInputError(f"input {name!r} must have rank {len(plan_shape)} "
                                        f"(shape like {plan_shape}), got shape {arr.shape}")
            arrays[name] = arr
        return arrays

    def _extent(self, arrays: dict[str, np.ndarray]) -> tuple[int, int | None]:
        batch = seq = None
        for name, arr in arrays.items():
            roles = self._input_roles[name]
            for axis, role in enumerate(roles):
                size = arr.shape[axis]
                if role == BATCH:
                    if batch is not None and size != batch:
                        raise InvalidInputError(f"inputs disagree on the batch size ({batch} vs {size} "
                                                f"in {name!r})")
                    batch = size
                elif role == SEQ:
                    if seq is not None and size != seq:
                        raise InvalidInputError(f"inputs disagree on the sequence length ({seq} vs {size} "
                                                f"in {name!r})")
                    seq = size
        return batch, seq

    def _choose_bucket(self, batch: int | None, seq: int | None) -> Bucket:
        buckets = list(self._plans)
        if len(buckets) == 1 and buckets[0] == Bucket(0, None):
            return buckets[0]
        return choose_bucket(buckets, batch, seq)

    def _fill_input(self, buffer: np.ndarray, arr: np.ndarray, name: str) -> None:
        if buffer.shape == arr.shape:
            buffer[...] = arr
            return
        roles = self._input_roles[name]
        index = []
        for axis, size in enumerate(arr.shape):
            role = roles[axis] if axis < len(roles) else None
            if role is None and size != buffer.shape[axis]:
                raise InvalidInputError(f"input {name!r} must have size {buffer.shape[axis]} on axis "
                                        f"{axis}, got shape {arr.shape}")
            index.append(slice(0, size))
        buffer[...] = self.pad_values[name]
        buffer[tuple(index)] = arr

    def _slice_output(self, out: np.ndarray, name: str, batch: int | None, seq: int | None) -> np.ndarray:
        roles = self._output_roles.get(name, ())
        index = []
        for axis in range(out.ndim):
            role = roles[axis] if axis < len(roles) else None
            index.append(slice(0, batch) if role == BATCH else slice(0, seq) if role == SEQ else slice(None))
        return out[tuple(index)]

    def _find_output_roles(self, graph: Graph, first: Bucket) -> dict[str, tuple[str | None, ...]]:
        """Which output axes follow the batch / sequence axis: from declared dim names, else probing."""
        symbols = {}
        for v in graph.inputs:
            for axis, role in enumerate(self._input_roles[v.name]):
                if role and v.shape and isinstance(v.shape[axis], str):
                    symbols[v.shape[axis]] = role
        roles: dict[str, tuple[str | None, ...]] = {}
        unresolved = []
        for v in graph.outputs:
            if v.shape and all(isinstance(d, int) or d in symbols for d in v.shape):
                roles[v.name] = tuple(symbols.get(d) if isinstance(d, str) else None for d in v.shape)
            else:
                unresolved.append(v.name)
        if unresolved:
            roles.update(self._probe_output_roles(unresolved, first))
        return roles

    def _probe_output_roles(self, names: list[str], bucket: Bucket) -> dict[str, tuple[str | None, ...]]:
        base = specialise(self._graph, self._bucket_shapes(bucket)).value_info
        more_batch = specialise(self._graph, self._bucket_shapes(Bucket(bucket.batch + 1, bucket.sequence)))
        roles = {}
        more_seq = None
        if bucket.sequence is not None:
            more_seq = specialise(self._graph, self._bucket_shapes(Bucket(bucket.batch, bucket.sequence + 1)))
        for name in names:
            shape = base[name].shape
            b_shape = more_batch.value_info[name].shape
            s_shape = more_seq.value_info[name].shape if more_seq is not None else shape
            roles[name] = tuple(
                BATCH if b != d else SEQ if s != d else None
                for d, b, s in zip(shape, b_shape, s_shape, strict=True))
        return roles


def return_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc's `malloc_trim`): the weights released above were
    allocated on the heap, which glibc otherwise keeps, so the process would stay as large as at its
    compile-time peak. A no-op where the C library has no `malloc_trim`."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to call
        return
    trim(0)


def compile(model: ModelSource, batch_size: int | Sequence[int] | None = None,
            sequence_length: int | Sequence[int] | None = None, num_threads: int | None = None,
            input_shapes: Mapping[str, Sequence[int]] | None = None,
            pad_values: Mapping[str, int | float] | None = None, optimize: bool = True,
            precision: str = "fp32", buckets: Sequence[tuple[int, int]] | None = None) -> Engine:
    """Compile an ONNX model (path, bytes or ModelProto) into an `Engine`.

    `sequence_length` may be a list: one plan is compiled per length, all sharing one copy of the
    weights, and each call runs in the smallest bucket that fits. `batch_size` may be a list too (every
    batch size with every length); `buckets=[(batch, sequence), ...]` names the pairs instead (see
    `sparsejit.plan.buckets.token_budget_buckets` for a token budget's pairs). `input_shapes` instead fixes every
    input's shape exactly (for models that are not batch × sequence shaped). `optimize=False`
    skips the fusion passes (one kernel per ONNX node; for debugging). `precision="bf16"` rounds the
    constant fp32 matrix-product weights to bf16 (run by AVX512-BF16 kernels, float32 accumulation;
    activations are rounded to bf16 as they enter those products); everything else stays fp32.
    `precision="auto"` picks bf16 where this CPU's bf16 products measure clearly faster than fp32 (AMD
    Zen 4/5), else fp32; `engine.describe()` says what was chosen. The source may also be a Hugging Face
    checkpoint directory (config.json + safetensors; see `sparsejit.checkpoints`).
    """
    return Engine(model, batch_size, sequence_length, num_threads, input_shapes, pad_values, optimize,
                  precision, buckets)
