"""FusedLSTM against what users pick instead, on the CPU: nn.LSTM, onnxruntime and OpenVINO on the
same layer, float32 and bf16, 1 and 2 threads, inference (issue 20, item 4).

    flock /tmp/lstm-bench.lock python benchmarks/peers.py --out benchmarks/results/peers-cpu.json
    python benchmarks/peers.py --smoke --out /tmp/peers.json     # tiny shapes, 1 round, seconds

The layer: one ``nn.LSTM(D, H)`` with fixed random weights per (D, H); FusedLSTM loads its
state_dict; the ONNX file is nn.LSTM's own export (``torch.onnx.export``, the TorchScript exporter,
``dynamo=False``: one standard LSTM node; h_0/c_0 inputs, y/h_n/c_n outputs, T and B dynamic), run by
onnxruntime (``InferenceSession``, intra_op_num_threads = threads, inter_op 1, CPU provider) and by
OpenVINO (``Core.compile_model`` of the same file reshaped to the row's static shape,
INFERENCE_NUM_THREADS = threads, PERFORMANCE_HINT LATENCY, one stream, INFERENCE_PRECISION_HINT f32
or bf16: OpenVINO picks bf16 by itself on AMX CPUs, so float32 rows ask for f32). Both runtimes
are timed on their fastest call, buffers bound once (:class:`Bound`: onnxruntime's IOBinding,
OpenVINO infer requests on shared-memory tensors, the state buffers swapped between two
bindings); in step rows their plain call (a feed dict per call: ``session.run``,
``infer_request.infer``) is timed in the same rounds too (``plain_call``).

Precision: ``float32`` rows run every peer in float32. ``bf16`` rows run FusedLSTM and nn.LSTM
under ``torch.autocast("cpu", torch.bfloat16)`` and OpenVINO with the bf16 precision hint;
onnxruntime has no bf16 LSTM on the CPU, so it is not timed again there: its float32 row of the
same shape and threads is the one a bf16 row is compared with (each bf16 row says so in ``note``).

Rows (``--rows``):

* ``step``: one step per call at B=1 (a T=1 call, the state it returns fed to the next call), D = H,
  H in 256, 512, 1024. The time is per call = per step. FusedLSTM's row also holds ``split``: the
  implementation's own ``forward_inference`` (the kernel and its binding, operands already cast,
  timed in the same rounds) against the whole module call; the rest is checks, dispatch,
  allocation and autograd bookkeeping (issue 20, item 2). Step rows also hold ``stream``:
  :class:`lstm_fast.LSTMStream` on the same module (the serving API: a snapshot of the weights,
  the state kept inside, ``step(x)``; bf16 rows ``dtype=torch.bfloat16``, the weights packed once
  into bf16 panels), checked against nn.LSTM as the peers are, timed in the same rounds.
* ``sequence``: whole sequences, one call each: B in 1, 4; T in 35, 1000; H in 256, 512; D = 64
  (an embedding-sized input, the issue's B1 T1000 D64 H512 measurement); plus the d2l shape
  B32 T35 D28 H256 and B64 T100 D128 H512.
* ``training``: FusedLSTM against nn.LSTM only (forward and backward of every gradient, under
  autocast for bf16), the sequence shapes with B <= 4 (online learning). The check compares the
  outputs (``max_abs_error``) and every gradient (``max_grad_error``: max abs error over
  max(1, the gradient's largest magnitude)) with nn.LSTM float32.

Each peer's output (y, h_n, c_n; the step rows over 3 fed-back steps) is compared with nn.LSTM in
float32 (no autocast) on fresh random inputs before it is timed; the row records the max abs error.
A peer over the tolerance (``TOLERANCE``) goes to ``failed`` and is not timed. A peer that cannot
run (not installed, the export failed) goes to ``skipped`` with the reason.

``--competitor N``: N busy processes (``python -c "while True: pass"``) run through the whole
measurement, an oversubscribed machine (issue 20: degrade gracefully, never collapse); the JSON
says so in ``competitor``.

Timing: for each row, every peer in turn runs a block of calls (about ``--round-seconds``, at
least one call), the starting peer rotating from round to round, ``--rounds`` rounds; a row holds
the median seconds per call over the rounds and its interquartile range (q1, q3), tokens/sec and
us per step. torch's calls run under ``torch.inference_mode()`` (and autocast), entered once per
block.

Bandwidth: the row's weight bytes per step (step rows: W_ih and W_hh, both read every step;
sequence rows: W_hh, the input projection being one GEMM over the whole sequence) in the math's
dtype (4 bytes float32, 2 bytes bf16), that over the step time (``weight_bytes_per_sec``), next to
a probe of this machine in the same run: repeated ``torch.sum`` of a float32 buffer of that many
bytes at the row's thread count (each thread reads the same part every time, as the kernels'
threads keep their rows of W_hh), run at every row (``probe_bytes_per_sec_at_row``); the best over
the run per (bytes, threads) is ``probe_bytes_per_sec`` and ``bandwidth_limit_seconds`` = bytes /
that best. ``probes`` lists them with the seconds of an empty (16-element) sum, the probe's own
per-call overhead.

The JSON (``kind: peers``) is rendered by ``benchmarks/readme_table.py`` into docs/results.md
(section ``peers``, with the issue's targets met/short).
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lstm_fast import FusedLSTM, LSTMStream  # noqa: E402
from lstm_fast.d2l.bench import COMPETITOR, busy_processes, environment, git_commit, quartiles  # noqa: E402
from lstm_fast.d2l.files import atomic_write_bytes  # noqa: E402
from lstm_fast.ops.plan import cast_inputs, plan_layer  # noqa: E402

STEP_H = (256, 512, 1024)
SEQUENCES = ([(B, T, 64, H) for B in (1, 4) for T in (35, 1000) for H in (256, 512)]
             + [(32, 35, 28, 256), (64, 100, 128, 512)])
SMOKE_STEP_H = (16,)
SMOKE_SEQUENCES = [(1, 5, 8, 16), (3, 4, 5, 16)]
PEERS = ("fused", "torch", "onnxruntime", "openvino")
#: Max abs error against nn.LSTM float32 that a peer may show before it is timed, per precision.
TOLERANCE = {"float32": 1e-4, "bf16": 0.05}
CHECK_STEPS = 3
SEED = 20


# ---------------------------------------------------------------- the layer and its peers
class _WithState(nn.Module):
    """nn.LSTM with h_0/c_0 as inputs and h_n/c_n as outputs: what the ONNX export sees."""

    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x, h0, c0):
        y, (h, c) = self.lstm(x, (h0, c0))
        return y, h, c


def export_onnx(reference, D, path):
    """nn.LSTM's own ONNX export of ``reference`` to ``path`` (T and B dynamic)."""
    H = reference.hidden_size
    args = (torch.zeros(2, 1, D), torch.zeros(1, 1, H), torch.zeros(1, 1, H))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_WithState(reference).eval(), args, buf, dynamo=False, input_names=["x", "h0", "c0"],
                          output_names=["y", "hn", "cn"],
                          dynamic_axes={"x": {0: "T", 1: "B"}, "h0": {1: "B"}, "c0": {1: "B"}, "y": {0: "T", 1: "B"},
                                        "hn": {1: "B"}, "cn": {1: "B"}})
    Path(path).write_bytes(buf.getvalue())
    return path


class Layer:
    """One (D, H) layer: nn.LSTM with fixed random weights, FusedLSTM with its state_dict, its ONNX
    file, and the runtimes' sessions (made on first use, per thread count and precision)."""

    def __init__(self, D, H, tmp, runtimes):
        torch.manual_seed(SEED * 1000003 + D * 1009 + H)
        self.D, self.H = D, H
        self.reference = nn.LSTM(D, H).eval()
        self.fused = FusedLSTM(D, H).eval()
        self.fused.load_state_dict(self.reference.state_dict())
        self.runtimes = runtimes
        self.onnx_path, self.onnx_error = None, None
        if runtimes:
            try:
                self.onnx_path = export_onnx(self.reference, D, Path(tmp) / f"lstm-D{D}-H{H}.onnx")
            except Exception as e:  # noqa: BLE001 (recorded: the peers that need the file are skipped)
                self.onnx_error = f"torch.onnx.export failed: {type(e).__name__}: {str(e)[:200]}"
        self._sessions = {}

    def session(self, peer, threads, precision, B, T):
        """The onnxruntime session or OpenVINO compiled model for this row (cached)."""
        key = (peer, threads, precision) + ((B, T) if peer == "openvino" else ())
        if key not in self._sessions:
            if peer == "onnxruntime":
                ort = self.runtimes["onnxruntime"]
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
                so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                self._sessions[key] = ort.InferenceSession(str(self.onnx_path), so, providers=["CPUExecutionProvider"])
            else:
                ov = self.runtimes["openvino"]
                core = ov.Core()
                model = core.read_model(str(self.onnx_path))
                model.reshape({"x": [T, B, self.D], "h0": [1, B, self.H], "c0": [1, B, self.H]})
                compiled = core.compile_model(model, "CPU", {
                    "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
                self._sessions[key] = compiled
        return self._sessions[key]


def torch_runner(layer, precision):
    """run(x, h, c) -> (y, h, c) for a torch module (inference mode, autocast for bf16): one call."""
    ac = precision == "bf16"

    def run(x, h, c):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
            y, (h, c) = layer(x, (h, c))
        return y, h, c
    return run


def runner(layer, peer, precision, threads, B, T):
    """(run, block) for one peer: ``run(x, h, c)`` -> torch float32 (y, h, c), one call (for the
    check); ``block(x, h, c, k, feed)`` runs k calls (``feed``: each call's state is the last one's
    output) inside the contexts a user would enter once."""
    if peer in ("fused", "torch"):
        module = layer.fused if peer == "fused" else layer.reference
        ac = precision == "bf16"

        def block(x, h, c, k, feed):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
                for _ in range(k):
                    y, (h2, c2) = module(x, (h, c))
                    if feed:
                        h, c = h2, c2

        def run(x, h, c):
            y, h, c = torch_runner(module, precision)(x, h, c)
            return y.float(), h.float(), c.float()
        return run, block
    target = layer.session(peer, threads, precision, B, T)
    bound = Bound(peer, target, layer.runtimes[peer], T, B, layer.D, layer.H)

    def block(x, h, c, k, feed):
        for _ in range(k):
            bound.call(feed)

    def run(x, h, c):
        bound.load(x.numpy(), h.numpy(), c.numpy())
        bound.call(True)
        return tuple(torch.from_numpy(a.copy()) for a in bound.outputs())
    return run, block


def plain_block(layer, peer, precision, threads, B, T):
    """A block of the runtime's plain call (``session.run`` with a feed dict; OpenVINO's
    ``infer_request.infer(dict)``), state fed back: what the bound call saves, per call."""
    x = np.random.randn(T, B, layer.D).astype(np.float32)
    h = np.zeros((1, B, layer.H), np.float32)
    target = layer.session(peer, threads, precision, B, T)
    if peer == "onnxruntime":
        def call(feeds):
            return target.run(None, feeds)
    else:
        req = target.create_infer_request()

        def call(feeds):
            out = req.infer(feeds)
            return [out[i] for i in range(3)]

    def block(k):
        feeds = {"x": x, "h0": h, "c0": h}
        for _ in range(k):
            _, feeds["h0"], feeds["c0"] = call(feeds)
    return block


class Bound:
    """A runtime's call on buffers bound once (onnxruntime: IOBinding; OpenVINO: infer requests
    with shared-memory input and output tensors): what a latency-minded server writes, and the
    runtimes' fastest call. Two bindings swap the state buffers (ping-pong), so one call's h_n/c_n
    is the next one's h_0/c_0 without a copy."""

    def __init__(self, peer, target, rt, T, B, D, H):
        f = np.float32
        self.x, self.y = np.zeros((T, B, D), f), np.zeros((T, B, H), f)
        self.h = [np.zeros((1, B, H), f) for _ in range(2)]
        self.c = [np.zeros((1, B, H), f) for _ in range(2)]
        self.i = 0
        self.calls = []
        for i in range(2):
            ins = (self.x, self.h[i], self.c[i])
            outs = (self.y, self.h[1 - i], self.c[1 - i])
            if peer == "onnxruntime":
                io = target.io_binding()
                for name, a in zip(("x", "h0", "c0"), ins, strict=True):
                    io.bind_input(name, "cpu", 0, f, a.shape, a.ctypes.data)
                for name, a in zip(("y", "hn", "cn"), outs, strict=True):
                    io.bind_output(name, "cpu", 0, f, a.shape, a.ctypes.data)
                self.calls.append(lambda io=io: target.run_with_iobinding(io))
            else:
                req = target.create_infer_request()
                for j, a in enumerate(ins):
                    req.set_input_tensor(j, rt.Tensor(a, shared_memory=True))
                for j, a in enumerate(outs):
                    req.set_output_tensor(j, rt.Tensor(a, shared_memory=True))
                self.calls.append(req.infer)

    def load(self, x, h, c):
        np.copyto(self.x, x)
        np.copyto(self.h[self.i], h)
        np.copyto(self.c[self.i], c)

    def call(self, feed):
        """One call; ``feed``: the next call reads this one's h_n, c_n."""
        self.calls[self.i]()
        if feed:
            self.i ^= 1

    def outputs(self):
        """(y, h_n, c_n) of the last call (fed: the state the next call reads)."""
        return self.y, self.h[self.i], self.c[self.i]


def max_error(run, layer, kind, B, T):
    """Max abs difference of ``run``'s (y, h_n, c_n) from nn.LSTM float32 on fresh random inputs;
    step rows over CHECK_STEPS fed-back steps."""
    ref = torch_runner(layer.reference, "float32")
    g = torch.Generator().manual_seed(B * 7919 + T * 31 + layer.H)
    h = torch.randn(1, B, layer.H, generator=g) * 0.5
    c = torch.randn(1, B, layer.H, generator=g) * 0.5
    hr, cr, err = h, c, 0.0
    for _ in range(CHECK_STEPS if kind == "step" else 1):
        x = torch.randn(T, B, layer.D, generator=g)
        got = run(x, h, c)
        want = ref(x, hr, cr)
        err = max([err] + [float((a.float() - b).abs().max()) for a, b in zip(got, want, strict=True)])
        _, h, c = got
        _, hr, cr = want
        h, c = h.contiguous(), c.contiguous()
    return err


def _forward_backward(module, x, h, c, upstream, autocast):
    """(y, h_n, c_n, dx, dh_0, dc_0, d every parameter) of one call with gradients."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, (hn, cn) = module(x, (h, c))
    grads = torch.autograd.grad([y, hn, cn], [x, h, c] + list(module.parameters()), upstream)
    return [y, hn, cn], list(grads)


def training_runner(layer, peer, precision, B, T):
    """(check, block) for a training row (forward and backward of every gradient): ``check()`` ->
    (max abs error of the outputs, max error of the gradients, each over max(1, its largest
    magnitude)) against nn.LSTM float32; ``block(k)`` runs k forward+backward calls."""
    module = layer.fused if peer == "fused" else layer.reference
    ac = precision == "bf16"
    D, H = layer.D, layer.H

    def check():
        g = torch.Generator().manual_seed(B * 7919 + T * 31 + H + 1)
        x, h, c = (torch.randn(*s, generator=g).requires_grad_() for s in ((T, B, D), (1, B, H), (1, B, H)))
        up = [torch.randn(*s, generator=g) for s in ((T, B, H), (1, B, H), (1, B, H))]
        out, grads = _forward_backward(module, x, h, c, up, ac)
        ref_out, ref_grads = _forward_backward(layer.reference, x, h, c, up, False)
        out_err = max(float((a.detach().float() - b.detach()).abs().max()) for a, b in zip(out, ref_out, strict=True))
        grad_err = max(float((a.float() - b).abs().max()) / max(1.0, float(b.abs().max()))
                       for a, b in zip(grads, ref_grads, strict=True))
        return out_err, grad_err

    x = torch.randn(T, B, D, requires_grad=True)
    h = torch.zeros(1, B, H)
    c = torch.zeros(1, B, H)
    up = [torch.randn(T, B, H), torch.randn(1, B, H), torch.randn(1, B, H)]

    def block(k):
        for _ in range(k):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
                y, (hn, cn) = module(x, (h, c))
            torch.autograd.backward([y, hn, cn], up)
        module.zero_grad(set_to_none=True)
        x.grad = None
    return check, block


def kernel_block(layer, precision, B):
    """A block of FusedLSTM's implementation call alone (the plan's ``forward_inference`` on
    operands cast once, state not fed back): the split of a T=1 call."""
    x = torch.randn(1, B, layer.D)
    h = torch.randn(B, layer.H)
    c = torch.randn(B, layer.H)
    m = layer.fused
    ac = precision == "bf16"
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=ac):
        plan = plan_layer(x, m.weight_hh_l0, m.backend)
        with torch.autocast("cpu", enabled=False):
            ops = cast_inputs(plan, x, h, c, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    impl = plan.module

    def block(k):
        with torch.inference_mode():
            for _ in range(k):
                impl.forward_inference(*ops)
    return plan.implementation, block


def stream_runner(layer, B, precision):
    """(run, block) for :class:`lstm_fast.LSTMStream` over the FusedLSTM (step rows; bf16 rows:
    ``dtype=torch.bfloat16``, the weights packed into bf16 panels once): the serving API with a
    snapshot of the weights; ``run`` starts it from (h, c) for the check."""
    stream = LSTMStream(layer.fused, B, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)

    def run(x, h, c):
        stream.reset((h, c))
        y = stream.step(x[0])
        h2, c2 = stream.state
        return y[None], h2, c2
    x = torch.randn(B, layer.D)

    def block(k):
        with torch.inference_mode():
            for _ in range(k):
                stream.step(x)
    return run, block


# ---------------------------------------------------------------- timing and the probe
def time_interleaved(blocks, rounds, round_s, gap_s=0.0, clock=time.perf_counter):
    """name -> per-round seconds per call; ``blocks``: name -> f(k) running k calls. Each is warmed
    up (one call), sized by a second call (k calls take about ``round_s``, at least 1), then each round
    runs one block of each, the starting one rotating. ``gap_s``: an untimed sleep before each
    block, so the thread pool of the block before (OpenMP, onnxruntime, OpenVINO's TBB: each spins
    a while after its work) has gone to sleep and does not compete with the next one's threads."""
    names = list(blocks)
    for name in names:
        blocks[name](1)
    ks = {}
    for name in names:
        t0 = clock()
        blocks[name](1)
        ks[name] = max(1, int(round_s / max(clock() - t0, 1e-7)))
    out = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            k = ks[name]
            if gap_s:
                time.sleep(gap_s)
            t0 = clock()
            blocks[name](k)
            out[name].append((clock() - t0) / k)
    return out


#: (bytes, threads) -> [best bytes/sec so far, its empty-call seconds, probes run]
_PROBES = {}


def bandwidth_probe(nbytes, threads, repeats=5, seconds=0.01):
    """Bytes/sec of reading a float32 buffer of ``nbytes`` with ``torch.sum`` at ``threads`` torch
    threads now: the best of ``repeats`` means of repeated sums. Also kept in :data:`_PROBES` as
    the best over the run (a shared machine: the best is the closest to what the hardware does),
    with the seconds of an empty (16-element) sum."""
    buf = torch.ones(max(16, nbytes // 4))
    tiny = torch.ones(16)

    def best(t):
        t.sum()
        t0 = time.perf_counter()
        t.sum()
        n = max(1, int(seconds / max(time.perf_counter() - t0, 1e-7)))
        b = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n):
                t.sum()
            b = min(b, (time.perf_counter() - t0) / n)
        return b
    bw = buf.numel() * 4 / best(buf)
    entry = _PROBES.setdefault((nbytes, threads), [0.0, None, 0])
    if bw > entry[0]:
        entry[0], entry[1] = bw, best(tiny)
    entry[2] += 1
    return bw


def finish_limits(rows):
    """Each row's bandwidth limit from the best probe of its (bytes, threads) over the whole run."""
    for r in rows:
        bw = _PROBES[(r["weight_bytes_per_step"], r["threads"])][0]
        r["probe_bytes_per_sec"] = bw
        r["bandwidth_limit_seconds"] = r["weight_bytes_per_step"] / bw


# ---------------------------------------------------------------- rows
def weight_bytes_per_step(kind, D, H, precision):
    """Weight bytes one step reads: step rows W_ih and W_hh, sequence and training rows W_hh (the
    forward's; the backward reads it once more per step)."""
    n = 4 * H * H + (4 * H * D if kind == "step" else 0)
    return n * (2 if precision == "bf16" else 4)


def measure_group(layer, kind, B, T, threads, precision, peers, rounds, round_s, gap_s, doc, log):
    """The rows of one (shape, threads, precision): check each peer, time the ones that pass."""
    D, H = layer.D, layer.H
    shape = dict(kind=kind, B=B, T=T, D=D, H=H, threads=threads, dtype=precision)
    label = f"{kind} B{B} T{T} D{D} H{H} {precision} {threads}t"
    blocks, errors, grad_errors = {}, {}, {}
    for peer in peers:
        if peer == "onnxruntime" and precision == "bf16":
            continue
        if peer in ("onnxruntime", "openvino"):
            reason = layer.onnx_error if peer in layer.runtimes else None
            if peer not in layer.runtimes:
                continue            # recorded once in doc["skipped"]
            if reason:
                doc["skipped"].append(dict(shape, implementation=peer, reason=reason))
                continue
        if kind == "training" and peer not in ("fused", "torch"):
            continue
        try:
            if kind == "training":
                check, train_block = training_runner(layer, peer, precision, B, T)
                err, grad_errors[peer] = check()
            else:
                run, block = runner(layer, peer, precision, threads, B, T)
                err = max_error(run, layer, kind, B, T)
        except Exception as e:  # noqa: BLE001 (a peer that cannot run this row is recorded, not timed)
            doc["skipped"].append(dict(shape, implementation=peer, reason=f"{type(e).__name__}: {str(e)[:300]}"))
            continue
        if not (err <= TOLERANCE[precision] and grad_errors.get(peer, 0.0) <= TOLERANCE[precision]):
            doc["failed"].append(dict(shape, implementation=peer, max_abs_error=err, tolerance=TOLERANCE[precision],
                                      **({"max_grad_error": grad_errors[peer]} if peer in grad_errors else {})))
            log(f"{label}: {peer} FAILED the check (max abs error {err:.3g} > {TOLERANCE[precision]})")
            continue
        errors[peer] = err
        if kind == "training":
            blocks[peer] = train_block
            continue
        x = torch.randn(T, B, D)
        h = torch.zeros(1, B, H)
        c = torch.zeros(1, B, H)
        blocks[peer] = (lambda blk, x=x, h=h, c=c: lambda k: blk(x, h, c, k, kind == "step"))(block)
    if not blocks:
        return []
    split_impl = None
    stream_error = None
    if kind == "step" and "fused" in blocks:
        split_impl, blocks["fused:implementation-call"] = kernel_block(layer, precision, B)
        run, blocks["fused:stream"] = stream_runner(layer, B, precision)
        stream_error = max_error(run, layer, kind, B, T)
        if stream_error > TOLERANCE[precision]:
            doc["failed"].append(dict(shape, implementation="fused:stream", max_abs_error=stream_error,
                                      tolerance=TOLERANCE[precision]))
            del blocks["fused:stream"]
    if kind == "step":
        for peer in ("onnxruntime", "openvino"):
            if peer in blocks:
                blocks[f"{peer}:plain-call"] = plain_block(layer, peer, precision, threads, B, T)
    times = time_interleaved(blocks, rounds, round_s, gap_s)
    nbytes = weight_bytes_per_step(kind, D, H, precision)
    bw = bandwidth_probe(nbytes, threads)
    rows = []
    for peer in errors:
        q1, med, q3 = quartiles(times[peer])
        step = med / T
        row = dict(shape, implementation=peer, seconds=med, q1_seconds=q1, q3_seconds=q3, repeats=len(times[peer]),
                   us_per_step=step * 1e6, tokens_per_sec=B * T / med, max_abs_error=errors[peer],
                   weight_bytes_per_step=nbytes, weight_bytes_per_sec=nbytes / step, probe_bytes_per_sec_at_row=bw)
        if peer in grad_errors:
            row["max_grad_error"] = grad_errors[peer]
        if peer in ("onnxruntime", "openvino"):
            row["api"] = "IOBinding" if peer == "onnxruntime" else "infer requests on shared-memory tensors"
            if f"{peer}:plain-call" in times:
                pq1, pmed, pq3 = quartiles(times[f"{peer}:plain-call"])
                row["plain_call"] = {"api": "session.run(feed dict)" if peer == "onnxruntime" else "infer(feed dict)",
                                     "seconds": pmed, "q1_seconds": pq1, "q3_seconds": pq3}
        if precision == "bf16" and peer == "openvino":
            row["note"] = "OpenVINO INFERENCE_PRECISION_HINT=bf16"
        if precision == "bf16" and peer in ("fused", "torch"):
            row["note"] = "torch.autocast('cpu', torch.bfloat16)"
        if precision == "bf16" and peer == "fused" and "onnxruntime" in peers:
            row["note"] += "; onnxruntime: float32 only (no bf16 LSTM on the CPU), compare with its float32 row"
        if peer == "fused" and split_impl:
            kq1, kmed, kq3 = quartiles(times["fused:implementation-call"])
            row["split"] = {"implementation": split_impl, "implementation_call_seconds": kmed,
                            "implementation_call_q1_seconds": kq1, "implementation_call_q3_seconds": kq3,
                            "module_call_seconds": med, "outside_implementation_seconds": med - kmed}
        if peer == "fused" and "fused:stream" in times:
            sq1, smed, sq3 = quartiles(times["fused:stream"])
            api = "LSTMStream.step (a snapshot of the weights, the state kept inside)"
            if precision == "bf16":
                api = api.replace("LSTMStream.step", "LSTMStream(dtype=torch.bfloat16).step")
            row["stream"] = {"api": api,
                             "seconds": smed, "q1_seconds": sq1, "q3_seconds": sq3, "max_abs_error": stream_error}
        rows.append(row)
    by = {r["implementation"]: r for r in rows}
    log(f"{label}: " + ", ".join(f"{p} {r['us_per_step']:.1f} us/step" for p, r in by.items())
        + (f" (implementation call {by['fused']['split']['implementation_call_seconds'] * 1e6:.1f} us)"
           if "split" in by.get("fused", {}) else "")
        + (f" (stream {by['fused']['stream']['seconds'] * 1e6:.1f} us)" if "stream" in by.get("fused", {}) else "")
        + f"; probe {bw / 1e9:.1f} GB/s")
    return rows


def load_runtimes(peers, doc):
    """The installed peer runtimes (name -> module); the others go to doc['skipped']."""
    out = {}
    for name in ("onnxruntime", "openvino"):
        if name not in peers:
            continue
        try:
            out[name] = __import__(name)
        except ImportError as e:
            doc["skipped"].append({"implementation": name, "reason": f"not installed ({e}); "
                                   "pip install 'lstm-fast[bench]'"})
    if out:
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
        except ImportError as e:
            for name in list(out):
                doc["skipped"].append({"implementation": name, "reason": f"onnx not installed ({e}): no export"})
            out = {}
    return out


def lscpu_model():
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    keep = ("Model name", "L1d cache", "L2 cache", "L3 cache", "CPU(s)", "Thread(s) per core", "Flags")
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in keep:
            v = v.strip()
            if k.strip() == "Flags":
                v = sorted(f for f in v.split() if f.startswith(("avx512f", "avx512_bf16", "amx")))
            out[k.strip()] = v
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 1 round, 1 thread (seconds)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--round-seconds", type=float, default=0.02, help="time per peer per round")
    ap.add_argument("--gap-seconds", type=float, default=0.005,
                    help="untimed sleep before each block (the previous peer's spinning threads go idle)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--precisions", nargs="+", default=["float32", "bf16"], choices=("float32", "bf16"))
    ap.add_argument("--rows", nargs="+", default=["step", "sequence", "training"],
                    choices=("step", "sequence", "training"))
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    ap.add_argument("--max-T", type=int, help="leave out sequence rows with T above this (a quick run)")
    ap.add_argument("--competitor", type=int, default=0, metavar="N",
                    help="N busy processes (python -c 'while True: pass') running through the whole run")
    ap.add_argument("--out", default="benchmarks/results/peers-cpu.json", help="the JSON (written atomically)")
    a = ap.parse_args(argv)
    if a.smoke:
        a.rounds, a.round_seconds, a.gap_seconds = 1, 0.001, 0.0
        if a.threads == [1, 2]:
            a.threads = [1]
    log = lambda s: print(s, flush=True)  # noqa: E731
    step_h = SMOKE_STEP_H if a.smoke else STEP_H
    sequences = [s for s in (SMOKE_SEQUENCES if a.smoke else SEQUENCES) if a.max_T is None or s[1] <= a.max_T]
    env = environment("cpu")
    env["threads"] = a.threads[0] if len(a.threads) == 1 else " and ".join(map(str, a.threads))
    env["lscpu"] = lscpu_model()
    doc = {"kind": "peers", "environment": env,
           "command": " ".join(["python", "benchmarks/peers.py"] + list(sys.argv[1:] if argv is None else argv)),
           "commit": git_commit(), "smoke": a.smoke, "rounds": a.rounds, "round_seconds": a.round_seconds,
           "gap_seconds": a.gap_seconds, "tolerance": TOLERANCE, "rows": [], "skipped": [], "failed": []}
    if a.competitor:
        doc["competitor"] = {"processes": a.competitor, "command": COMPETITOR}
    runtimes = load_runtimes(a.peers, doc)
    for name in ("onnxruntime", "openvino"):
        env[name] = getattr(runtimes.get(name), "__version__", None)
    for s in doc["skipped"]:
        log(f"skipped {s['implementation']}: {s['reason']}")
    t_start = time.perf_counter()
    layers = {}
    with tempfile.TemporaryDirectory() as tmp, busy_processes(a.competitor):
        def layer(D, H):
            if (D, H) not in layers:
                layers[(D, H)] = Layer(D, H, tmp, runtimes)
            return layers[(D, H)]
        groups = ([("step", 1, 1, H, H) for H in step_h] if "step" in a.rows else []) + (
            [("sequence", B, T, D, H) for B, T, D, H in sequences] if "sequence" in a.rows else []) + (
            [("training", B, T, D, H) for B, T, D, H in sequences if B <= 4] if "training" in a.rows else [])
        for threads in a.threads:
            torch.set_num_threads(threads)
            for kind, B, T, D, H in groups:
                for precision in a.precisions:
                    doc["rows"] += measure_group(layer(D, H), kind, B, T, threads, precision, a.peers, a.rounds,
                                                 a.round_seconds, a.gap_seconds, doc, log)
    finish_limits(doc["rows"])
    doc["probes"] = [{"bytes": b, "threads": t, "best_bytes_per_sec": bw, "empty_call_seconds": e, "probes": n}
                     for (b, t), (bw, e, n) in sorted(_PROBES.items())]
    doc["seconds"] = time.perf_counter() - t_start
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(a.out), (json.dumps(doc, indent=1) + "\n").encode())
    log(f"wrote {a.out} ({len(doc['rows'])} rows, {len(doc['skipped'])} skipped, {len(doc['failed'])} failed, "
        f"{doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
