"""``python -m ingest`` is the ``ingest`` command."""

import sys

from ingest.cli.main import entry

sys.exit(entry())
