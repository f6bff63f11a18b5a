"""The book builder: executes the notebooks with papermill and builds the Jupyter Book, offline.

A tool beside the library and the harness (``python -m basisprune_book execute|build|html``); the
experiments never import it. See :mod:`basisprune_book.cli`.
"""
