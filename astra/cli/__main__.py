"""``python -m astra.cli``: the ``astra`` command without its console script."""

from astra.cli import main

main()
