"""``python -m multiloss.team start|stop|status|storage-url``: the team stack (make team-server)."""

import sys

from multiloss.team.server import main

sys.exit(main(sys.argv[1:]))
