"""Parameters and FLOPs of an IR, counted the way model cards count them."""

from __future__ import annotations

import numpy as np
import openvino as ov


def complexity(model: ov.Model) -> tuple[int, int]:
    """(parameters, FLOPs) the way model cards count them.

    Parameters: elements of the floating-point constants that feed a computation (weights,
    biases, folded BatchNorm scales). FLOPs: 2 per multiply-accumulate of convolutions and
    matrix products, plus one per output element of elementwise arithmetic.
    """
    params = 0
    flops = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Constant":
            if op.get_output_element_type(0).is_real() and _feeds_arithmetic(op):
                params += int(np.prod(op.get_output_shape(0), dtype=np.int64))
        elif kind in ("Convolution", "GroupConvolution"):
            out = op.get_output_shape(0)
            weights = op.input(1).get_shape()
            per_output = int(np.prod(weights[-2:])) * (
                weights[2] if kind == "GroupConvolution" else weights[1])
            flops += 2 * int(np.prod(out, dtype=np.int64)) * per_output
        elif kind == "MatMul":
            a = op.input(0).get_shape()
            transpose_a = op.get_attributes().get("transpose_a", False)
            k = a[-2] if transpose_a else a[-1]
            flops += 2 * int(np.prod(op.get_output_shape(0), dtype=np.int64)) * k
        elif kind in ("Add", "Multiply", "Subtract", "Divide", "Sigmoid", "Swish", "Clamp",
                      "ReduceMean", "Relu", "HSwish"):
            flops += int(np.prod(op.get_output_shape(0), dtype=np.int64))
    return params, flops


def _feeds_arithmetic(const: ov.Node) -> bool:
    arithmetic = {"Convolution", "GroupConvolution", "MatMul", "Add", "Multiply", "Subtract"}
    for target in const.output(0).get_target_inputs():
        node = target.get_node()
        if node.get_type_name() == "Convert":  # compressed weights are decompressed first
            return _feeds_arithmetic(node)
        if node.get_type_name() in arithmetic:
            return True
    return False
