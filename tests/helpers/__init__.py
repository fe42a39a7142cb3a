"""Helpers shared by the test suite, imported as ``from helpers.<module> import ...``.

``tests/`` is on ``sys.path`` through pytest's ``pythonpath = tests`` ini option
(setup.cfg), which works with ``--import-mode=importlib``: test modules are not a package,
so they cannot import each other, but they can all import this one.

- ``clips``: hand-made clips whose frames encode their own index, with exact ground truth.
- ``stage2_parts``: a tiny real stage-1 codec for the stage-2 tests.
- ``pipeline_fakes``: stand-in codec and generator, panned clips, event videos.
- ``tiny_pipeline``: a ``FoleyPipeline`` of real, tiny, randomly initialised stages.
"""
