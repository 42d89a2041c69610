"""``python -m p2pnet.cli``: the ``p2pnet`` command."""

import sys

from p2pnet.cli.app import main

sys.exit(main())
