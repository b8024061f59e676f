"""``python -m burn_plugin`` is the ``burn`` command."""
import sys

from burn_plugin.cli import main

sys.exit(main())
