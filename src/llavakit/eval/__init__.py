"""Evaluation of the LLaVA benchmarks. Metrics (pure functions) live in :mod:`llavakit.eval.metrics`."""
