"""`python -m bundlerec ...` runs the `bundlerec` command (for torchrun and environments without the script)."""

from bundlerec.commands.cli import main

raise SystemExit(main())
