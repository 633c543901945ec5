"""``python -m service.cli``: the ``optpilot`` command."""

import sys

from service.cli import main

sys.exit(main())
