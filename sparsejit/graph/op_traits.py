"""Kernel-agnostic facts about ai.onnx operators, read by the graph passes and the lowerings alike.

- `ELEMENTWISE`: each output element depends only on the same (broadcast) element of the inputs.
- `VIEW`: the output is the input's data under another shape; no copy is needed.
- `NONDETERMINISTIC`: two applications to the same inputs may differ (never merged, never folded).
- `foldable(op)`: may be evaluated at compile time when all its inputs are constants.
"""

from __future__ import annotations

ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
    "And", "Or", "Xor", "Mod", "Max", "Min", "Sum", "Mean", "Where", "Erf", "Tanh", "Sqrt", "Exp",
    "Log", "Sin", "Cos", "Abs", "Floor", "Ceil", "Sign", "Round", "Neg", "Reciprocal", "Not", "IsNaN",
    "IsInf", "Relu", "Sigmoid", "Softplus", "LeakyRelu", "Elu", "HardSigmoid", "PRelu", "Gelu", "Cast",
    "Clip", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot",
})

VIEW = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})

NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})

# Dropout is the identity at inference, but folding it would freeze a training-mode mask.
_NEVER_FOLDED = NONDETERMINISTIC | {"Dropout"}


def is_elementwise(op_type: str, domain: str = "") -> bool:
    return not domain and op_type in ELEMENTWISE


def is_view(op_type: str, domain: str = "") -> bool:
    return not domain and op_type in VIEW


def is_nondeterministic(op_type: str, domain: str = "") -> bool:
    return not domain and op_type in NONDETERMINISTIC


def foldable(op_type: str, domain: str = "") -> bool:
    return bool(domain) or op_type not in _NEVER_FOLDED
