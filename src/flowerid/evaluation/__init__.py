"""Measuring a checkpoint: metrics (numpy), figures (matplotlib, imported only here), the HTML report,
and `evaluate()` (run)."""
