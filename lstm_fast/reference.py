"""The d2l scratch LSTM (Dive into Deep Learning, "Long Short-Term Memory", from scratch), our own
code with d2l's signatures, plus converters between its gate tensors and nn.LSTM's state_dict.

This is the independent reference the fused implementations are validated against: plain
per-step tensor ops, the math exactly as the book writes it::

    I = sigmoid(X W_xi + H W_hi + b_i)        F = sigmoid(X W_xf + H W_hf + b_f)
    O = sigmoid(X W_xo + H W_ho + b_o)        C_tilda = tanh(X W_xc + H W_hc + b_c)
    C = F * C + I * C_tilda                   H = O * tanh(C)

d2l stores weights as x @ W (W_x* is (inputs, hiddens)); nn.LSTM stores ``weight_ih_l0`` as
(4*hiddens, inputs) with gate rows in the order i, f, g (= C_tilda), o, and two biases.
"""
import torch
import torch.nn.functional as F

GATE_NAMES = ("W_xi", "W_hi", "b_i", "W_xf", "W_hf", "b_f", "W_xo", "W_ho", "b_o", "W_xc", "W_hc", "b_c")
# nn.LSTM row blocks in order: which d2l gate fills each.
_TORCH_GATE_ORDER = ("i", "f", "c", "o")


def get_lstm_params(vocab_size, num_hiddens, device):
    """d2l's parameters: the 12 gate tensors, then the output layer W_hq, b_q; all require grad."""
    num_inputs = num_outputs = vocab_size

    def normal(shape):
        return torch.randn(size=shape, device=device) * 0.01

    def three():
        return (normal((num_inputs, num_hiddens)), normal((num_hiddens, num_hiddens)),
                torch.zeros(num_hiddens, device=device))

    W_xi, W_hi, b_i = three()  # input gate
    W_xf, W_hf, b_f = three()  # forget gate
    W_xo, W_ho, b_o = three()  # output gate
    W_xc, W_hc, b_c = three()  # candidate memory cell
    W_hq = normal((num_hiddens, num_outputs))
    b_q = torch.zeros(num_outputs, device=device)
    params = [W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q]
    for param in params:
        param.requires_grad_(True)
    return params


def init_lstm_state(batch_size, num_hiddens, device):
    """d2l's zero state (H, C), each (batch_size, num_hiddens)."""
    return (torch.zeros((batch_size, num_hiddens), device=device),
            torch.zeros((batch_size, num_hiddens), device=device))


def lstm(inputs, state, params):
    """d2l's forward: ``inputs`` (T, B, D) -> (outputs (T*B, Q), (H, C)).

    ``params`` holds the 12 gate tensors and the output layer (W_hq, b_q) as from
    :func:`get_lstm_params`; with only the 12 gate tensors the outputs are the hidden states H
    themselves, (T*B, num_hiddens), which is what the LSTM layer alone returns.
    """
    W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c = params[:12]
    head = params[12:]
    (H, C) = state
    outputs = []
    for X in inputs:
        I = torch.sigmoid((X @ W_xi) + (H @ W_hi) + b_i)
        F_ = torch.sigmoid((X @ W_xf) + (H @ W_hf) + b_f)
        O = torch.sigmoid((X @ W_xo) + (H @ W_ho) + b_o)
        C_tilda = torch.tanh((X @ W_xc) + (H @ W_hc) + b_c)
        C = F_ * C + I * C_tilda
        H = O * torch.tanh(C)
        outputs.append(H @ head[0] + head[1] if head else H)
    return torch.cat(outputs, dim=0), (H, C)


class RNNModelScratch:
    """d2l's RNN model from scratch: one-hot inputs, a recurrent forward function, its params."""

    def __init__(self, vocab_size, num_hiddens, device, get_params, init_state, forward_fn):
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.params = get_params(vocab_size, num_hiddens, device)
        self.init_state, self.forward_fn = init_state, forward_fn

    def __call__(self, X, state):
        X = F.one_hot(X.T, self.vocab_size).type(torch.float32)
        return self.forward_fn(X, state, self.params)

    def begin_state(self, batch_size, device):
        return self.init_state(batch_size, self.num_hiddens, device)


def scratch_to_lstm_state_dict(params, suffix="_l0"):
    """d2l's 12 gate tensors (W_xi, W_hi, b_i, ...; extra entries ignored) -> nn.LSTM state_dict
    entries ``weight_ih{suffix}``, ``weight_hh{suffix}``, ``bias_ih{suffix}``, ``bias_hh{suffix}``.

    The d2l bias goes into bias_ih; bias_hh is zero (nn.LSTM adds the two).
    """
    g = dict(zip(GATE_NAMES, params[:12], strict=True))
    w_ih = torch.cat([g[f"W_x{k}"].t() for k in _TORCH_GATE_ORDER], 0)
    w_hh = torch.cat([g[f"W_h{k}"].t() for k in _TORCH_GATE_ORDER], 0)
    b = torch.cat([g[f"b_{k}"] for k in _TORCH_GATE_ORDER], 0)
    return {f"weight_ih{suffix}": w_ih.detach().clone(), f"weight_hh{suffix}": w_hh.detach().clone(),
            f"bias_ih{suffix}": b.detach().clone(), f"bias_hh{suffix}": torch.zeros_like(b).detach()}


def lstm_state_dict_to_scratch(state_dict, suffix="_l0"):
    """nn.LSTM state_dict (one layer/direction, selected by ``suffix``) -> the 12 d2l gate tensors
    in :data:`GATE_NAMES` order; the two biases are summed, a missing bias (bias=False) is zero."""
    w_ih, w_hh = state_dict[f"weight_ih{suffix}"], state_dict[f"weight_hh{suffix}"]
    if f"weight_hr{suffix}" in state_dict:
        raise ValueError("the d2l scratch LSTM has no projection; state_dict has weight_hr" + suffix)
    H = w_hh.shape[1]
    b = torch.zeros(4 * H, dtype=w_ih.dtype, device=w_ih.device)
    for name in ("bias_ih", "bias_hh"):
        if name + suffix in state_dict:
            b = b + state_dict[name + suffix]
    wi, wh, bb = w_ih.split(H, 0), w_hh.split(H, 0), b.split(H, 0)
    blocks = dict(zip(_TORCH_GATE_ORDER, range(4), strict=True))
    out = []
    for name in GATE_NAMES:
        kind, gate = name[:3] if name.startswith("W") else name[:1], name[-1]
        k = blocks[gate]
        t = wi[k].t() if kind == "W_x" else wh[k].t() if kind == "W_h" else bb[k]
        out.append(t.detach().clone())
    return out
