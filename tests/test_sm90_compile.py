"""Every kernel configuration the dispatcher can choose compiles for sm_90a (H100) without
local memory: no spills, no stack. Catches kernels that only the interpreter accepts."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "shared" / "tools"


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.skipif(not (TOOLS / "sm90_report.py").exists(), reason=f"no {TOOLS}/sm90_report.py beside the checkout")
def test_every_config_compiles_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("sm90_compile_check.py")), str(TOOLS)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) >= 3 * 4, f"too few configurations compiled: {len(rows)}"
    bad = [r for r in rows if r["local"] or r["stack"]]
    assert not bad, "configurations that spill on sm_90:\n" + "\n".join(map(json.dumps, bad))
