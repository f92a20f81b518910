"""`tpw-exporter diagnose`: which of the product's failure patterns happened over a window, from Prometheus.

command.py (flags, the run) → dataset.py (what it reads from Prometheus's HTTP API, on one grid of
scrapes) → detectors.py (one detector per pattern, thresholds from thresholds.py: the alert rules') →
report.py (text and JSON) and plot.py (HTML/SVG). prometheus.py is the HTTP client, stats.py the numerics.
"""
