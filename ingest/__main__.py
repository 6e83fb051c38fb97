"""``python -m ingest`` is the ``ingest`` command."""

import sys

from ingest.cli.main import main

sys.exit(main())
