"""`python -m cli ARGS` = `narrator ARGS`."""

import sys

from cli.main import main

sys.exit(main())
