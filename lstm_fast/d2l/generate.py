"""Text generation: d2l's ``predict_ch8``, continuing a prefix one token at a time with the state
carried (what ``lstm-fast generate`` and the training run's closing lines print).

With a FusedLSTM on the CPU in float32 (one direction, no projections, no autocast) the steps
run on an :class:`lstm_fast.LSTMStream`: a snapshot of the weights taken when generation starts
(they do not change during it), the state kept inside, one kernel call per character instead of a
full module call. The stream gives bitwise the module call's h where that call takes the
small-batch kernels (every batch-1 step up to H 1024 on the CPUs measured), so the text is the
module loop's. Elsewhere (CUDA, bf16, other layers) the module loop as d2l writes it."""
import torch

from ..module import FusedLSTM
from ..stream import LSTMStream


def _stream_for(net, device):
    """An LSTMStream over ``net.rnn`` where generation can run on one, else None (LSTMStream itself
    refuses what it cannot run: bidirectional, projections, other dtypes or devices)."""
    if not isinstance(net.rnn, FusedLSTM) or torch.device(device).type != "cpu" or torch.is_autocast_enabled("cpu"):
        return None
    try:
        return LSTMStream(net.rnn, 1)
    except (TypeError, ValueError):
        return None


@torch.no_grad()
def predict(prefix, num_preds, net, vocab, device, temperature=0.0, token="char", generator=None):
    """d2l's ``predict_ch8``: warm up on ``prefix``, then ``num_preds`` tokens (greedy when
    temperature is 0, else sampled from softmax(logits / temperature))."""
    was_training = net.training
    net.eval()
    tokens = list(prefix) if token == "char" else prefix.split()
    if not tokens:
        raise ValueError("--prefix must contain at least one token")
    stream = _stream_for(net, device)
    if stream is None:
        state = net.begin_state(1, device)

        def step(tok):
            nonlocal state
            y, state = net(torch.tensor([[tok]], device=device), state)
            return y
    else:
        x = torch.zeros(1, net.vocab_size)     # the one-hot input row, set and cleared per step

        def step(tok):
            x[0, tok] = 1.0
            h = stream.step(x)
            x[0, tok] = 0.0
            return net.linear(h)
    outputs = [vocab[tokens[0]]]
    for y in tokens[1:]:
        step(outputs[-1])
        outputs.append(vocab[y])
    for _ in range(num_preds):
        y = step(outputs[-1])
        if temperature > 0:
            probs = torch.softmax(y[0].float() / temperature, 0)
            outputs.append(int(torch.multinomial(probs.cpu(), 1, generator=generator)))
        else:
            outputs.append(int(y.argmax(dim=1)))
    net.train(was_training)
    sep = "" if token == "char" else " "
    return sep.join(vocab.idx_to_token[i] for i in outputs)
