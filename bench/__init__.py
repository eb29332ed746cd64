"""Throughput, memory and batch-size measurement."""
