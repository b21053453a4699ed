"""``python -m clipsort`` is the ``clipsort`` command."""

from clipsort.cli import main

main()
