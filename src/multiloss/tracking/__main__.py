"""``python -m multiloss.tracking uri|init|ui-command``: the store's URI, its experiments, the UI command."""

import sys

from multiloss.tracking.store import main

sys.exit(main(sys.argv[1:]))
