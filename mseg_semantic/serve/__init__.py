"""``mseg serve``: segmentation as a web service (FastAPI + uvicorn) with a page for the browser.

The parts, each in its module: :mod:`.batcher` (the bounded queue and the one worker thread that batches requests
of the same size class), :mod:`.engine` (the model: loading, decoding uploads, running batches, encoding outputs),
:mod:`.store` (outputs kept in memory for links that expire), :mod:`.app` (the routes, the API key, the limits and
the JSON errors) and :mod:`.page` (the page at ``/``). Only :mod:`.app` needs FastAPI (the ``serve`` extra); the
command line (:mod:`mseg_semantic.cli.serve`) checks that it is installed before importing it.
"""
