"""Import caelum_mcp from another checkout ($CAELUM_TREE), child processes included.

For measuring two versions side by side with one virtual environment: put this folder first on
PYTHONPATH and name the checkout, e.g.

    git worktree add /tmp/old a942097
    cd /tmp/old && CAELUM_TREE=/tmp/old PYTHONPATH=$OLDPWD/bench/reference \
        $OLDPWD/.venv/bin/python bench/pool_overhead.py --stub-only

``bench/side_by_side.sh`` alternates the pool and capacity benchmarks of two checkouts this way.
"""

import importlib.util
import os
import pathlib
import sys

_root = os.environ.get("CAELUM_TREE")
if _root:
    root = pathlib.Path(_root).resolve()
    MAP = {
        "caelum_mcp": root / "caelum_mcp",
        "caelum_mcp.supervisors": root / "supervisors",
        "caelum_mcp.tools": root / "tools",
    }

    class _Finder:
        @classmethod
        def find_spec(cls, fullname, path=None, target=None):
            if fullname in MAP:
                where = MAP[fullname]
                return importlib.util.spec_from_file_location(
                    fullname, where / "__init__.py", submodule_search_locations=[str(where)]
                )
            return None

    sys.meta_path.insert(0, _Finder)
