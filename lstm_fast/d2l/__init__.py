"""The d2l application: *Dive into Deep Learning*'s LSTM language model on *The Time Machine*,
end to end: :mod:`.data` (the corpus, vocabulary and sequence loaders), :mod:`.train` (the
model, the training loop, checkpoints), :mod:`.generate` (continuing a prefix one token at a
time), :mod:`.bench` (``lstm-fast bench``: the implementations measured side by side) and
:mod:`.cli` (the ``lstm-fast`` command). Built on the public API only (FusedLSTM, reference)."""
