"""runbot's benchmarks: `python -m bench [--quick] [--only NAME[,NAME]]` (or `make bench`).

Every headline figure is a ratio against a baseline measured in the same run, with medians over
repeated trials; absolute times are printed for context. Results go to bench/results.json.
"""
