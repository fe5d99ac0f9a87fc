"""The hypothesis scripts, one module each, and their shared runner (``common``, ``runner``).

A script defines ``NAME``, ``HYPOTHESIS``, ``analyze(ctx) -> Result`` and ``plot(result, path)`` (and
optionally ``add_arguments(parser)``, and ``analyze_seed(ctx)`` where it runs under ``--protocol seed``,
else ``NOT_FOR_SEED_PROTOCOL``: why not). ``python -m mi_bridge.analyses NAME`` runs one,
``python -m mi_bridge.analyses all`` every one on one set of loaded models.
"""
