"""The LSTM's activations for every kernel here, in the accumulation dtype.

Shape legend: elementwise on any tile. d2l: I, F, O = sigmoid(.), C_tilda = tanh(.), H = O * tanh(C).
tanh is written through the sigmoid (one exp, exact saturation at +-inf: the frozen rows of a
variable-length batch rely on sigmoid(+inf) = 1 and sigmoid(-inf) = 0).
"""
import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    return 2.0 * sigmoid(2.0 * x) - 1.0
