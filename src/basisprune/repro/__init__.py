"""The reproduction harness: data, assets, models, training, the experiment runners, results with
provenance, profiles, sweeps and the ``basisprune`` command line. It imports the library
(:mod:`basisprune`); the library never imports it."""
