"""``python -m daemon`` is the ``clipsort`` command."""

from daemon.cli import main

main()
