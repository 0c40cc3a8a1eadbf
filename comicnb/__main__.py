"""``python -m comicnb``: the command line."""

from comicnb.cli import main

raise SystemExit(main())
