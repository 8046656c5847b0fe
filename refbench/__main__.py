"""``python -m refbench`` (and ``accelerate launch -m refbench``)."""

import sys

from refbench.cli import main

sys.exit(main())
