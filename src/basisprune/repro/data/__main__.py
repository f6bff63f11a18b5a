"""``python -m basisprune.repro.data``: the data sets' command line (:func:`basisprune.repro.data.main`)."""

from . import main

raise SystemExit(main())
