"""``python -m weightport``: the same command line as ``weightport``."""

import sys

from weightport.cli import main

sys.exit(main())
