"""Text generation: d2l's ``predict_ch8``, continuing a prefix one token at a time with the state
carried (what ``lstm-fast generate`` and the training run's closing lines print)."""
import torch


@torch.no_grad()
def predict(prefix, num_preds, net, vocab, device, temperature=0.0, token="char", generator=None):
    """d2l's ``predict_ch8``: warm up on ``prefix``, then ``num_preds`` tokens (greedy when
    temperature is 0, else sampled from softmax(logits / temperature))."""
    was_training = net.training
    net.eval()
    tokens = list(prefix) if token == "char" else prefix.split()
    if not tokens:
        raise ValueError("--prefix must contain at least one token")
    state = net.begin_state(1, device)
    outputs = [vocab[tokens[0]]]
    for y in tokens[1:]:
        _, state = net(torch.tensor([[outputs[-1]]], device=device), state)
        outputs.append(vocab[y])
    for _ in range(num_preds):
        y, state = net(torch.tensor([[outputs[-1]]], device=device), state)
        if temperature > 0:
            probs = torch.softmax(y[0].float() / temperature, 0)
            outputs.append(int(torch.multinomial(probs.cpu(), 1, generator=generator)))
        else:
            outputs.append(int(y.argmax(dim=1)))
    net.train(was_training)
    sep = "" if token == "char" else " "
    return sep.join(vocab.idx_to_token[i] for i in outputs)
