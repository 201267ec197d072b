"""`python -m mmlib`: the `mmlib` command."""

from mmlib.cli import main

raise SystemExit(main())
