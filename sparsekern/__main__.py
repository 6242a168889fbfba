"""``python -m sparsekern`` runs the demo (see ``sparsekern/demo.py``)."""
import sys

from .demo import main

sys.exit(main())
