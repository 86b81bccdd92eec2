"""``python -m supervisor`` is the same as the ``vsv`` command."""

from supervisor.cli import main

raise SystemExit(main())
