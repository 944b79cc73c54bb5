"""Load-test benchmarks: the raw in-process pipeline, the served app and peer servers, side by side."""
