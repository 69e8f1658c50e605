"""ragloop benchmarks (not tests): `python -m bench [--quick]` runs the side-by-side suite (bench/suite/);
`bench_retrieval.py`, `bench_generator.py` and `bench_serve.py` are single-question scripts."""
