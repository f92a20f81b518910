"""The live page at `/`: the last 15 minutes of each GPU and endpoint, and the findings on them.

history.py (collector process): a bounded ring buffer of each tick's key values, served as JSON on request
(`/api/v1/history`, asked over the collector's socket like `/api/v1/snapshot`). findings.py (collector
process): the ring buffer as a diagnose `Dataset`, so that diagnose's own detectors find the patterns.
web.py (server process): the routes for the page, its static files (exporter/static/) and the history.
"""
