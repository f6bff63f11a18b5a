"""``python -m basisprune_book execute|build|html``: see :mod:`basisprune_book.cli`."""

from .cli import main

raise SystemExit(main())
