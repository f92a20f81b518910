"""`python -m exporter` runs the same CLI as the `tpw-exporter` command."""

from exporter.cli import main

raise SystemExit(main())
