"""`python -m motif.bench`."""

import sys

from motif.bench.run import main

sys.exit(main())
