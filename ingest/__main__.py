"""``python -m ingest`` is the ``ingest`` command."""

import sys

from ingest.cli import main

sys.exit(main())
