"""``python -m bridge`` is the same as the ``edge-bridge`` command."""

from bridge.cli import main

raise SystemExit(main())
