"""``python -m restore_client`` is the ``restore`` command."""

import sys

from restore_client.cli import main

sys.exit(main())
