"""``python -m coordcore.server [options]``: the same as ``coordcore serve``."""
import sys

from coordcore.server.cli import main

sys.exit(main())
