"""Compile every kernel configuration the dispatcher can choose for sm_90a (no GPU needed) and
print one JSON line per (kernel, config) with registers, shared memory and local memory (spills).

Run by tests/test_sm90_compile.py in a subprocess without TRITON_INTERPRET (the interpreter
replaces @triton.jit functions, which then cannot be compiled). Needs the shared tools folder
(``../shared/tools/sm90_report.py``), passed as argv[1].
"""
import json
import sys

sys.path.insert(0, sys.argv[1])
from sm90_report import report  # noqa: E402

import torch  # noqa: E402

from lstm_fast.kernels import all_configs  # noqa: E402
from lstm_fast.kernels.lstm_bwd import _lstm_bwd_kernel  # noqa: E402
from lstm_fast.kernels.lstm_fwd import _lstm_fwd_kernel  # noqa: E402

NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
FWD_STRIDES = ["stride_xg_t", "stride_xg_b", "stride_w", "stride_h0", "stride_y_t", "stride_y_b",
               "stride_c_t", "stride_c_b", "stride_g_t", "stride_g_b"]
BWD_STRIDES = ["stride_dy_t", "stride_dy_b", "stride_w", "stride_g_t", "stride_g_b", "stride_c_t",
               "stride_c_b", "stride_dg_t", "stride_dg_b", "stride_dh", "stride_dc"]


def main():
    for cfg, dtype, precision in all_configs():
        d = NAMES[dtype]
        ints = {k: "i32" for k in ("T", "B", "H", "R")}
        tiles = dict(DOT_PRECISION=precision, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k)
        fwd_sig = dict(XG=f"*{d}", W=f"*{d}", H0=f"*{d}", Y=f"*{d}", C="*fp32", G="*fp32", **ints,
                       **{k: "i32" for k in FWD_STRIDES})
        bwd_sig = dict(DY=f"*{d}", W=f"*{d}", G="*fp32", C="*fp32", DG="*fp32", DH="*fp32", DC="*fp32", **ints,
                       **{k: "i32" for k in BWD_STRIDES})
        for name, fn, sig, ce in (("fwd", _lstm_fwd_kernel, fwd_sig, dict(SAVE_GATES=True, **tiles)),
                                  ("fwd-nosave", _lstm_fwd_kernel, fwd_sig, dict(SAVE_GATES=False, **tiles)),
                                  ("bwd", _lstm_bwd_kernel, bwd_sig, tiles)):
            r = report(fn, sig, ce, cfg.num_warps, cfg.num_stages)
            print(json.dumps({"kernel": name, "dtype": d, "precision": precision, "config": cfg.__dict__,
                              **{k: r.get(k, 0) for k in ("reg", "shared", "local", "stack")}}), flush=True)


if __name__ == "__main__":
    main()
