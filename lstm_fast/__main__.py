"""``python -m lstm_fast`` is the ``lstm-fast`` command."""
import sys

from .cli import main

sys.exit(main())
