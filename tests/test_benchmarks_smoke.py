"""Every benchmark function executes once at a tiny shape (timing disabled), so the suite cannot
rot while CI never runs it for real."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_suite_runs_once(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks",
                        "--benchmark-disable", "--shapes", "tiny", "-x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert " passed" in p.stdout and "failed" not in p.stdout.splitlines()[-1]
