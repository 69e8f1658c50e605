import sys

from ragsys.cli import main

sys.exit(main())
