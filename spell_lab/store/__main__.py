"""`python -m spell_lab.store RUN [--export-images DIR] [--groups a,b]`: browse a run's store (spell_lab.store.view)."""

import sys

from .view import main

sys.exit(main())
