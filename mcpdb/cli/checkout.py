"""The source checkout's tools (benchmarks/, jepsen_like/), which are not installed with mcpdb.

Only ``mcpdb`` lands in site-packages: the benchmarks and the fault-injection harness live beside it in
the checkout (they start clusters, write reports and figures) and are imported from there, found from
mcpdb's own path::

    with source_checkout("mcpdb bench", "benchmarks"):
        from benchmarks import kv
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import mcpdb
from mcpdb.cli.errors import CliError

PACKAGE_DIR = Path(mcpdb.__file__).resolve().parent


@contextlib.contextmanager
def source_checkout(command: str, package: str, package_dir: Path = PACKAGE_DIR) -> Iterator[Path]:
    """Make the checkout holding ``package_dir`` importable for the imports in the block.

    Without one (a plain ``pip install mcpdb``), or without the dependencies those imports need, the
    command fails with one line saying what to install instead of a traceback.
    """
    root = package_dir.parent
    if not ((root / "pyproject.toml").is_file() and (root / package / "__init__.py").is_file()):
        raise CliError(
            f"`{command}` needs a source checkout: clone the mcpdb repository and "
            f"pip install -e '.[node,bench]' in it ({package}/ is not installed with mcpdb)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        yield root
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] in (package, "mcpdb"):
            raise
        raise CliError(
            f"`{command}` needs the node and benchmark dependencies: pip install -e "
            f"'.[node,bench]' in {root} (no module {error.name!r})"
        ) from None
