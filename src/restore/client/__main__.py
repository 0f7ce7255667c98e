"""``python -m restore.client`` is the ``restore`` command."""

import sys

from restore.client.cli import main

sys.exit(main())
