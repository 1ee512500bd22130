"""Entry point Pulumi runs (``Pulumi.yaml``: ``main: infra/``).

Pulumi runs this directory as a script, so only ``infra/`` itself is on the import path; the
repository root is added so the ``infra`` package (and ``pynomaly`` beside it) import as packages.
No module here is named like a library (``redis_ha``, ``kafka_cluster``), so nothing is shadowed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.program import main

main()
