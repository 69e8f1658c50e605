"""`python -m ragloop.cli ...`: the same as the `ragloop` command.

    $ python -m ragloop.cli search runs/idx "who wrote hamlet?"
"""

import sys

from ragloop.cli import main

sys.exit(main())
