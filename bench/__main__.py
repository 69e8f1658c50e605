"""`python -m bench [--quick] [--only SECTIONS]`: the side-by-side suite; see bench/README.md."""

import sys

from bench.suite.run import main

sys.exit(main())
