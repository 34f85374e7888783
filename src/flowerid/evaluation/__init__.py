"""Measuring a checkpoint: metrics (numpy), figures (matplotlib, imported only here), the HTML report
(report), and `evaluate()` (run); `check --deep` on a data folder (data_check) and its review page (review)."""
