"""``python -m studies.icl SUB``."""
import sys

from studies.icl import main

sys.exit(main())
