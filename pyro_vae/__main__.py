"""``python -m pyro_vae`` runs the ``pyro-vae`` command."""

import sys

from .cli import main

sys.exit(main())
