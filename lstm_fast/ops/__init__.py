"""The op layer: one LSTM layer call from its arguments to an implementation.

* :mod:`.functional`: ``fused_lstm`` (public) and ``lstm_layer`` (the seam FusedLSTM calls);
* :mod:`.checks`: argument and per-row-length checks;
* :mod:`.plan`: the one decision of which implementation runs a call and with which casts;
* :mod:`.autograd`: the autograd Function shared by every implementation;
* :mod:`.custom_ops`: the same layer as torch.library custom ops, for torch.compile and export;
* :mod:`.backends`: the backend names and their availability.

Calls go downward only: module -> functional -> (plan, autograd, custom_ops) -> implementations
(:mod:`lstm_fast.cpu`, :mod:`lstm_fast.triton_layer`) -> kernels.
"""
