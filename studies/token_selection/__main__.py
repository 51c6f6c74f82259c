"""``python -m studies.token_selection``: see :mod:`studies.token_selection`."""
import sys

from studies.token_selection import main

sys.exit(main())
