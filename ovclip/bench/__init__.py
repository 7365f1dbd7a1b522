"""Throughput, latency and accuracy of deployment folders, measured the way benchmark_app does."""
