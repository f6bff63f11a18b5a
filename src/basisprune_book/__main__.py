"""``python -m basisprune_book execute|build|html``: see :mod:`basisprune_book.build`."""

from .build import main

raise SystemExit(main())
