"""Planning tests: ``test_planner_exit_cost.py`` reuses ``test_planner.py``'s hand-computed
profiles, so this folder is importable by module name (as ``tests/conftest.py`` does for
``tests/``)."""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).parent))
