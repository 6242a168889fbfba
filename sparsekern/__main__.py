"""``python -m sparsekern``: the ``sparsekern`` command (train, compare, demo; see ``sparsekern/cli.py``)."""
import sys

from .cli import main

sys.exit(main())
