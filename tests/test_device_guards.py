"""Device guards as nn.LSTM behaves (issue 19 item 1), in FusedLSTM and in lstm_fast.fused_lstm.

nn.LSTM's messages (torch 2.13, CPU), which lstm_fast must give word for word:
* parameters elsewhere: "Input and parameter tensors are not at the same device, found input tensor
  at cpu and parameter tensor at meta" (and "... input tensor at meta and parameter tensor at cpu");
* h_0 or c_0 elsewhere: "Input and hidden tensors are not at the same device, found input tensor at
  cpu and hidden tensor at meta";
* input, parameters and hx all on meta: meta outputs of nn.LSTM's shapes.
Every case runs in a child process (tests/lstm_case_driver.py): today a parameter on meta with a CPU
input segfaults, which must fail one test, not kill the test run.
"""
import pytest

from lstm_case_runner import run_cases


CASES = {
    "module-params-meta": dict(param_device="meta"),
    "module-params-meta-proj-bi": dict(param_device="meta", proj=2, bi=True, layers=2),
    "module-input-meta": dict(x_device="meta"),
    "module-h0-meta": dict(hx="tuple", h_device="meta"),
    "module-c0-meta": dict(hx="tuple", c_device="meta"),
    "module-hx-cpu-rest-meta": dict(param_device="meta", x_device="meta", hx="tuple"),
    "module-all-meta": dict(param_device="meta", x_device="meta"),
    "module-all-meta-hx": dict(param_device="meta", x_device="meta", hx="tuple", h_device="meta", c_device="meta"),
    "module-all-meta-proj-bi-bf": dict(param_device="meta", x_device="meta", proj=2, bi=True, layers=2,
                                       batch_first=True),
    "module-all-meta-unbatched": dict(param_device="meta", x_device="meta", unbatched=True, layers=2),
    "module-all-meta-packed": dict(param_device="meta", x_device="meta", packed=[4, 2]),
    "functional-params-meta": dict(api="functional", param_device="meta"),
    "functional-input-meta": dict(api="functional", x_device="meta"),
    "functional-h0-meta": dict(api="functional", hx="tuple", h_device="meta"),
    "functional-c0-meta": dict(api="functional", hx="tuple", c_device="meta"),
    "functional-all-meta": dict(api="functional", param_device="meta", x_device="meta", hx="tuple",
                                h_device="meta", c_device="meta"),
}


@pytest.fixture(scope="module")
def results():
    return run_cases([dict(spec, id=k, seed=i) for i, (k, spec) in enumerate(CASES.items())])


@pytest.mark.parametrize("case", list(CASES))
def test_same_outcome_as_nn_lstm(results, case):
    r = results[case]
    assert "signal" not in r and "exit" not in r, f"child died in {case}: {r}"
    assert r["fused"] == r["ref"], f"{case}: nn.LSTM gave {r['ref']}, FusedLSTM gave {r['fused']}"
    assert r["close"] in (None, True)


def test_reference_messages_are_the_ones_documented(results):
    """The nn.LSTM side of the cases above, so the wording this file promises is checked, and can fail."""
    assert results["module-params-meta"]["ref"]["msg"] == (
        "Input and parameter tensors are not at the same device, found input tensor at cpu and parameter tensor at meta")
    assert results["module-input-meta"]["ref"]["msg"] == (
        "Input and parameter tensors are not at the same device, found input tensor at meta and parameter tensor at cpu")
    for k in ("module-h0-meta", "module-c0-meta", "functional-h0-meta", "functional-c0-meta"):
        assert results[k]["ref"] == {"exc": "RuntimeError", "msg": "Input and hidden tensors are not at the same "
                                     "device, found input tensor at cpu and hidden tensor at meta"}, k
    assert results["module-all-meta-proj-bi-bf"]["ref"]["devices"] == ["meta"] * 3
