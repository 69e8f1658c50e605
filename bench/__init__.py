"""ragloop benchmarks (not tests).

    python -m bench [--quick] [--only SECTIONS]      # measurements: the suite (bench/suite/), one section per module
    python -m bench.experiments [--check]            # trained experiments vs expected figures (bench/experiments/)
    python -m bench.scripts.make_corpus --out DIR    # data preparation (bench/scripts/)
"""
