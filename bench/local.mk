# Benchmark programs (built by make, not run by make check).
