"""``python -m lstm_fast`` is the ``lstm-fast`` command."""
import sys

from .d2l.cli import main

sys.exit(main())
