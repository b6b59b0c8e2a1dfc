"""``python -m footprint.cli``: the command line, as benchmarks and tests start it."""

from footprint.cli import main

main()
