"""Thread safety: two Python threads, each training its own FusedLSTM at the same time, each get
bitwise the result of training alone. The workspace pool is per thread and nothing else is
shared; the kernels run on torch's OpenMP pool with 2 threads, so both threads' parallel regions
overlap for real."""
import copy
import threading

import pytest
import torch
from torch import nn

from lstm_fast import FusedLSTM
from lstm_fast.cpu import workspace


def _models(shape):
    """One (FusedLSTM, head) per seed, made in the main thread (initialisation uses the global RNG)."""
    T, B, D, H = shape
    return {seed: (FusedLSTM(D, H), nn.Linear(H, D)) for seed in (1, 2)}


def _train(seed, steps, shape, models, out):
    """A few SGD steps with carried state on a copy of ``models[seed]``; the final weights and losses."""
    T, B, D, H = shape
    g = torch.Generator().manual_seed(seed)
    rnn, head = (copy.deepcopy(m) for m in models[seed])
    params = [*rnn.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.5)
    state, losses = None, []
    for _ in range(steps):
        x = torch.randn(T, B, D, generator=g)
        target = torch.randn(T, B, D, generator=g)
        y, state = rnn(x, state)
        loss = ((head(y) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = tuple(s.detach() for s in state)
        losses.append(loss.detach())
    pool = workspace._pool.buffers          # this thread's pool (the per-thread property checked below)
    out[seed] = ([p.detach().clone() for p in params], torch.stack(losses), pool, [b.data_ptr() for b in pool])


@pytest.mark.parametrize("shape", [(35, 32, 28, 256), (9, 5, 3, 33)], ids=["d2l", "small"])
def test_two_threads_training_match_serial(shape):
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        models, serial = _models(shape), {}
        for seed in (1, 2):
            _train(seed, 4, shape, models, serial)
        for _ in range(2):   # twice: the second round reuses both threads' pooled buffers
            both = {}
            errors = []

            def run(seed):
                try:
                    torch.set_num_threads(2)
                    _train(seed, 4, shape, models, both)
                except BaseException as e:  # surfaced below: a thread's exception is otherwise lost
                    errors.append(e)

            workers = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            assert not errors, errors
            for seed in (1, 2):
                (p_serial, l_serial, *_), (p_thread, l_thread, *_) = serial[seed], both[seed]
                assert torch.equal(l_serial, l_thread), f"losses of module {seed} differ when run concurrently"
                for a, b in zip(p_serial, p_thread, strict=True):
                    assert torch.equal(a, b), f"weights of module {seed} differ when run concurrently"
            # each thread drew from its own pool: no buffer was shared between the two
            pools = [both[seed][2] for seed in (1, 2)]
            assert pools[0] is not pools[1]
            if shape[0] * shape[1] * shape[3] >= workspace.MIN_ELEMENTS:
                assert all(pools) and not set(both[1][3]) & set(both[2][3])
    finally:
        torch.set_num_threads(threads_before)
