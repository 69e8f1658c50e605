"""The suite's command line and its sections' reports on stored records (nothing is measured): every
section is named in `python -m bench --only`, a section adds its own flags, quick runs write apart
from the full results kept in git, and the retrieval and startup records in bench/results/ still
render and give their goals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


@pytest.fixture(scope="module")
def run():
    from bench.suite import run

    return run


def test_every_bench_module_is_a_section(run):
    sections = Path(run.__file__).parent
    helpers = {"__init__", "common", "tables", "goals", "context", "models", "run", "worker", "bigdata"}
    modules = {p.stem for p in sections.glob("*.py")} - helpers
    assert {m.__name__.rsplit(".", 1)[1] for m in run.SECTIONS.values()} == modules
    for name, module in run.SECTIONS.items():
        assert module.TITLE and isinstance(module.PLOTS, dict), name
        assert name in run.ESTIMATE_S["quick"] and name in run.ESTIMATE_S["full"], name


def test_section_flags_and_where_quick_runs_write(run):
    args = run.parse_args(["--only", "serve,startup", "--serve-clients", "1", "2", "--startup-runs", "3"])
    assert args.sections == ["serve", "startup"]
    assert (args.serve_clients, args.startup_runs, args.serve_endpoint) == ([1, 2], 3, "answer")
    assert args.out_dir == run.RESULTS_DIR
    assert run.parse_args(["--quick"]).out_dir == run.RESULTS_DIR / "quick"
    assert (Path(run.__file__).parents[1] / ".gitignore").read_text().splitlines()[-1] == "results/quick/"
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "nonesuch"])


def test_no_quick_twins_are_kept():
    twins = [p.name for p in RESULTS.glob("*-quick.*") if (RESULTS / p.name.replace("-quick", "")).exists()]
    assert twins == []


@pytest.mark.parametrize("name", ["retrieval", "startup"])
def test_stored_records_render_and_give_goals(run, name):
    module = run.SECTIONS[name]
    record = json.loads((RESULTS / f"{name}.json").read_text())
    assert record["section"] == name
    assert module.report(record["result"]).count("\n|") >= 3
    goals = module.goals(record["result"])
    assert goals and all(g["met"] is True for g in goals)
    assert goals == record["result"]["goals"]
    part = run.earlier_part(RESULTS / f"{name}.json", 1, module)
    assert part.startswith(f"## 1. {module.TITLE}") and "cannot read" not in part


def test_replayed_stream_passages_go_through_the_duplicate_check_and_none_is_dropped(tmp_path, caplog):
    """Section "stream" replays a corpus past its size: every replayed passage is a document of its own, read
    through `iter_passages` (what `ragloop index` runs), so the check's memory is measured and N is exact."""
    import logging

    from bench.suite.stream import _passages

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "title": "T", "text": f"same words {i % 2}"}) + "\n"
                              for i in range(4)))
    with caplog.at_level(logging.INFO, logger="ragloop.data.corpus"):
        replayed = list(_passages(corpus, 25, replay=True))
    assert len(replayed) == len({p.id for p in replayed}) == len({p.text for p in replayed}) == 25
    assert caplog.records[-1].getMessage() == "corpus: 25 passages from 25 documents"


def test_serving_recall_is_against_the_exact_top_k_over_every_block():
    """Section "stream" scores the 3M folder's recall against brute force read in blocks: the blocks' merge
    must give the true top k (the best row may sit in any block), best first."""
    import numpy as np

    from bench.suite.stream import exact_top_k

    rng = np.random.default_rng(1)
    vectors, queries = rng.standard_normal((1000, 8), dtype=np.float32), rng.standard_normal((5, 8), dtype=np.float32)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    assert np.array_equal(exact_top_k(vectors, queries, 10, block=64), truth)


def test_compressed_index_rows_include_every_list_probed_with_a_wider_refine():
    """Section "compress" tries the two levers issue 25 names for hit@10: a probe of every IVF list and a
    refine over more candidates."""
    from bench.suite.compress import REFINE_FACTOR, WIDE_REFINE, refine_variants

    variants = refine_variants(256)
    assert (REFINE_FACTOR, 256) in variants and (WIDE_REFINE, 256) in variants
    assert len(set(variants)) == len(variants)
