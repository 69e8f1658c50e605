import sys

from ragloop.cli import main

sys.exit(main())
