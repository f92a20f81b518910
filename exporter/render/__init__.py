"""Snapshot to exposition bytes.

`exposition` renders the GPU families and holds the Renderer; `endpoints` and `derived` add theirs.
"""
