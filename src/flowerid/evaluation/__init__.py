"""Measuring a checkpoint: metrics (numpy), figures of the evaluation and of photos (figures, photo_figures:
matplotlib, imported only there), the HTML report (report) with its mistakes and their maps (why), and
`evaluate()` (run); `check --deep` on a data folder (data_check) and its review page (review)."""
