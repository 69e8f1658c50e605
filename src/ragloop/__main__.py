"""`python -m ragloop ...`: the same as the `ragloop` command (ragloop.cli).

    $ python -m ragloop --help
"""

import sys

from ragloop.cli import main

sys.exit(main())
