"""``python -m activecall``: the same as the ``activecall`` command."""

from activecall.cli import main

main()
