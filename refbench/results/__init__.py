"""The results stage, one module per idea.

    scoring      a prediction meets its ground truth: per-sample counts at every threshold
    metrics      the metrics, defined once (names, P@k thresholds, how each reduces counts)
    stats        bootstrap intervals and paired tests, resampling images
    calibration  which threshold a score-map method is reported at, chosen honestly
    scored       a run's stored rows read once, and its figures at the reported threshold
    tables       tables as plain data, and their console text
    files        results files written atomically and merged, never silently replaced
"""
