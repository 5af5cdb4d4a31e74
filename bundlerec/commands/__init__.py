"""The composition root: the `bundlerec` command and what assembles services (serve, import,
demo, evaluate's two-stage row). The one part of the shared package that may import a service;
everything else under bundlerec/ never does (tests/test_layering.py)."""
