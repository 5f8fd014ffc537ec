"""`python -m rmserve ...` runs the `rmserve` command."""

import sys

from rmserve.cli import main

sys.exit(main())
