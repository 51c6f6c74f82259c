"""``python -m studies.tensor_attention``: the study's command line (:mod:`studies.tensor_attention`)."""
import sys

from studies.tensor_attention import main

sys.exit(main())
