"""``python -m footprint``: the command line (``footprint.cli``)."""

from footprint.cli import main

main()
