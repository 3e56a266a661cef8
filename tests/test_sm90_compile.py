"""Every kernel the dispatcher can launch builds for an H100 (sm_90a), as a real launch
specialises it, with no spills, no local memory, shared memory within 227 KB; the hidden-split
kernels with W_hh on chip load it only before their time loop, and their 16-bit forward and the
backward's partial-sum layout (16-bit and tf32) use Hopper's wgmma (HGMMA); the "ll" step protocol's persistent time loops hold no atomic instruction at all (their
waits poll with plain volatile loads), while the "counter" fallback's do (the check can fail).
Runs the project's own ``benchmarks/sm90_report.py`` (no GPU needed, a few minutes)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sm90")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sm90_report.py"), "--json", str(out / "rows.json"),
                           "--sass-dir", str(out / "sass")], capture_output=True, text=True, env=env, timeout=1500)
    assert (out / "rows.json").exists(), proc.stderr[-3000:]
    return proc.returncode, json.loads((out / "rows.json").read_text()), out / "sass"


pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_no_spills_no_local_memory_shared_within_limit(report):
    code, rows, _ = report
    bad = [r for r in rows if r["spill_bytes"] or r["ldl_stl"] or r["shared_bytes"] > 227 * 1024]
    assert not bad, "kernels that spill or overflow shared memory on sm_90:\n" + "\n".join(map(json.dumps, bad))
    assert code == 0


def test_hidden_split_rows_for_every_required_shape(report):
    _, rows, sass_dir = report
    hs = [r for r in rows if r["path"] == "hidden_split"]
    for dtype in ("bfloat16", "float32"):
        for H in (256, 512, 768, 1024):
            assert any(r["dtype"] == dtype and r["H"] == H and r["direction"] == "fwd" and r["stationary"]
                       for r in hs), (dtype, H)
    for r in rows:
        name = r["sass"]
        assert (sass_dir / name).stat().st_size > 0
        assert r["path"] in name and r["direction"] in name and {"bfloat16": "bf16", "float16": "fp16",
                                                                 "float32": "fp32", "float64": "fp64"}[r["dtype"]] in name
    assert any(r["dtype"] == "float64" and r["mma"] == "DMMA" for r in rows)   # gradcheck on a GPU runs these


def test_hidden_split_keeps_w_out_of_the_time_loop(report):
    _, rows, _ = report
    # the ll protocol's init kernel (direction "init") writes slot 0 of the exchange once: no time loop
    persistent = [r for r in rows if r["path"] == "hidden_split" and r["driver"] == "persistent" and r["stationary"]
                  and r["direction"] in ("fwd", "bwd")]
    assert persistent and all(r["has_time_loop"] and r["w_loads_total"] > 0 for r in persistent)
    assert all(r["w_loads_in_time_loop"] == 0 for r in persistent), [r["sass"] for r in persistent
                                                                     if r["w_loads_in_time_loop"]]
    # the check can fail: the batch-tiled kernels and the streamed variant read W_hh inside their loop
    assert any(r["w_loads_in_time_loop"] for r in rows if r["path"] == "batch_tiled")
    assert any(r["w_loads_in_time_loop"] for r in rows if r["path"] == "hidden_split" and not r["stationary"]
               and r["driver"] == "persistent")


def test_16bit_hidden_split_forward_uses_wgmma(report):
    _, rows, _ = report
    fwd16 = [r for r in rows if r["path"] == "hidden_split" and r["direction"] == "fwd" and r["stationary"]
             and r["dtype"] in ("bfloat16", "float16")]
    assert fwd16 and all(r["mma"] == "HGMMA" for r in fwd16), [(r["sass"], r["mma"]) for r in fwd16]


def test_partial_sum_backward_keeps_w_on_chip_as_a_wgmma_operand(report):
    """The backward's partial-sum layout (config MC > 0) is what keeps its slice on chip at H 1024:
    rows exist for bf16 and tf32 there, every one uses wgmma (HGMMA, W_S^T from shared memory),
    and (the persistent ones) loads W only before the time loop."""
    _, rows, _ = report
    partial = [r for r in rows if r["path"] == "hidden_split" and r["direction"] == "bwd" and r["config"].get("MC")]
    for dtype in ("bfloat16", "float32"):
        assert any(r["dtype"] == dtype and r["H"] == 1024 and r["stationary"] for r in partial), dtype
    assert all(r["mma"] == "HGMMA" for r in partial if r["dtype"] in ("bfloat16", "float16")
               or r["precision"] == "tf32"), [(r["sass"], r["mma"]) for r in partial]
    assert all(r["w_loads_in_time_loop"] == 0 for r in partial if r["driver"] == "persistent")


def test_ll_time_loops_have_no_atomics_and_every_protocol_is_reported(report):
    _, rows, _ = report
    persistent = [r for r in rows if r["path"] == "hidden_split" and r["driver"] == "persistent"
                  and r["direction"] in ("fwd", "bwd")]
    ll = [r for r in persistent if r["protocol"] == "ll"]
    counter = [r for r in persistent if r["protocol"] == "counter"]
    for dtype in ("bfloat16", "float32"):
        for direction in ("fwd", "bwd"):
            assert any(r["dtype"] == dtype and r["direction"] == direction for r in ll), (dtype, direction)
    assert all(r["has_time_loop"] and r["atomics_in_time_loop"] == 0 for r in ll), \
        [r["sass"] for r in ll if r["atomics_in_time_loop"]]
    assert counter and all(r["atomics_in_time_loop"] > 0 for r in counter), \
        [r["sass"] for r in counter if not r["atomics_in_time_loop"]]
    assert any(r["kernel"] == "_ll_init_kernel" for r in rows)


def test_rows_for_every_plan_the_dispatcher_returns(report):
    """Each (direction, partition, protocol, dtype, precision) of lstm_config.all_plans() has its
    persistent and step rows."""
    import sys
    sys.path.insert(0, str(ROOT))
    from lstm_fast.kernels import lstm_config

    _, rows, _ = report
    short = {"torch.bfloat16": "bfloat16", "torch.float16": "float16", "torch.float32": "float32"}
    for direction, cfg, dtype, precision, B, H in lstm_config.all_plans():
        for driver in ("persistent", "step"):
            assert any(r["path"] == "hidden_split" and r["direction"] == direction and r["driver"] == driver
                       and r["dtype"] == short[str(dtype)] and r["precision"] == precision
                       and r["config"]["HS"] == cfg.hs and r["config"]["BB"] == cfg.bb
                       and r["protocol"] == cfg.protocol and r["stationary"] == cfg.stationary
                       and r["config"].get("MC", 0) == cfg.mc and r["config"].get("PC", 1) == cfg.pc
                       and r["config"]["num_warps"] == cfg.num_warps
                       for r in rows), (direction, cfg, dtype, precision, B, H, driver)
