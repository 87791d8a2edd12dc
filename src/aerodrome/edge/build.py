"""`python -m aerodrome.edge.build`: compile the edge's request path (see `native`)."""

import sys

from aerodrome.edge.native import main

sys.exit(main())
