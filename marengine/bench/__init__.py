"""The latency benchmark suite (`marengine bench`): machine metadata, timing, records,
the report and its plots, the FLOP counts of the roofline, and the eager anchor of the
official sampling semantics that every speed-up is measured against.

The benchmarks themselves are scripts in benchmarks/ (one question each); this package
holds what they share. Nothing here imports torch at package import time.
"""
