"""The measurement tooling runs: lstm-fast bench writes JSON and a plot; the GPU check script's
CPU-only path (--smoke) writes a results file with the environment recorded."""
import json
import subprocess
import sys
from pathlib import Path

from lstm_fast import cli
from lstm_fast.bench import measure, with_ratios

ROOT = Path(__file__).resolve().parents[1]


def test_measure_reports_tokens_per_second():
    r = measure("fused", 2, 3, 4, 5, "training", budget_s=0.05, max_repeats=3)
    assert r.tokens_per_sec > 0 and abs(r.tokens_per_sec - 6 / r.seconds) < 1e-6 * r.tokens_per_sec


def test_ratios_are_per_shape_and_mode():
    rows = [dict(implementation=i, device="cpu", mode="training", dtype="float32", B=1, T=2, D=3, H=4,
                 tokens_per_sec=tps) for i, tps in (("torch", 100.0), ("fused", 150.0))]
    assert [r["ratio_vs_torch"] for r in with_ratios(rows)] == [1.0, 1.5]


def test_bench_cli_json_and_plot(tmp_path, capsys):
    assert cli.main(["bench", "--device", "cpu", "--shapes", "tiny", "--budget", "0.02", "--json", str(tmp_path / "r.json"),
                     "--plot", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    assert "fused" in out and "scratch" in out and "vs nn.LSTM" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert {r["implementation"] for r in doc["rows"]} == {"scratch", "torch", "fused"}
    assert doc["environment"]["torch"] and (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_gpu_check_smoke(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(tmp_path),
                        "--budget", "0.02"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["complete"] and doc["environment"]["device_name"] and "skipped" not in doc
    assert {(r["implementation"], r["mode"]) for r in doc["rows"]} == {(i, m) for i in ("torch", "fused") for m in ("inference", "training")}


def test_gpu_check_skips_larger_shapes_after_a_slow_call(tmp_path):
    """With a 0-second slow-call limit, each implementation/mode measures only its cheapest shape
    and the larger one is listed as skipped, not silently dropped."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(tmp_path),
                        "--budget", "0.02", "--slow-call", "0"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {(r["B"], r["T"], r["H"]) for r in doc["rows"]} == {(1, 2, 5)}
    assert len(doc["skipped"]) == 4 and all("B2 T3 D4 H8" in s for s in doc["skipped"])


def test_readme_results_are_generated_from_the_json():
    """The README's results section is what benchmarks/readme_table.py makes of the committed JSON."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_table.py"), "--check"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
