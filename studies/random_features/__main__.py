"""``python -m studies.random_features``: see :mod:`studies.random_features`."""
import sys

from studies.random_features import main

sys.exit(main())
