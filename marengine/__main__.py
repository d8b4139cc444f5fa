"""`python -m marengine ...` (and `torchrun -m marengine train ...`)."""

import sys

from .cli import main

sys.exit(main())
