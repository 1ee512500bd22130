"""Entry point Pulumi runs (``Pulumi.yaml``: ``main: infra/``).

The components live in the ``infra`` package; put the repository root on the import path and take
this directory off it, so ``infra/redis.py`` and ``infra/kafka.py`` never shadow the ``redis`` and
``kafka`` client libraries.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from infra.program import main  # noqa: E402

main()
