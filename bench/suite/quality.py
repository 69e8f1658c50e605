"""Section 1: retrieval quality on the bundled SQuAD dev sample: dense vs BM25 vs hybrid.

hit@k: an answer string occurs (normalised, whole tokens) in one of the top k passages;
gold@k: the question's own paragraph is among the top k (`ragloop.evaluation.evaluate_retrieval`,
k = 1..100). Dense = all-MiniLM-L6-v2, Flat; hybrid = reciprocal-rank fusion of the two (ragloop's
default). One plot, k on a log axis.
"""

from __future__ import annotations

from bench.suite.common import num, pyplot, table, timed
from ragloop.constants import SEARCH_MODES
from ragloop.evaluation import evaluate_retrieval

TITLE = "Retrieval quality: dense vs BM25 vs hybrid"
KS = tuple(range(1, 101))
SHOWN = (1, 5, 10, 20, 50, 100)


def run(ctx) -> dict:
    examples = ctx.quality_examples
    retriever = ctx.dev_retriever
    curves, seconds = {}, {}
    for mode in SEARCH_MODES:
        seconds[mode], curves[mode] = timed(evaluate_retrieval, retriever, examples, KS, mode, progress=False)
    return {"passages": len(ctx.dev_passages), "questions": len(examples), "encoder": "all-MiniLM-L6-v2 (mean, "
            "normalised)", "index": "Flat", "curves": curves, "eval_seconds": seconds}


def report(res: dict) -> str:
    c = res["curves"]
    rows = []
    for k in SHOWN:
        rows.append([f"k = {k}", *(f"{c[m][f'hit@{k}']:.3f}" for m in SEARCH_MODES),
                     *(f"{c[m][f'gold@{k}']:.3f}" for m in SEARCH_MODES)])
    rows.append(["MRR@10 (gold)", "", "", ""] + [f"{c[m]['mrr@10']:.3f}" for m in SEARCH_MODES])
    head = ["", *(f"hit@k {m}" for m in SEARCH_MODES), *(f"gold@k {m}" for m in SEARCH_MODES)]
    best = max(SEARCH_MODES, key=lambda m: c[m]["hit@20"])
    return (f"{res['questions']:,} questions over {res['passages']:,} passages ({res['encoder']}, {res['index']}; "
            "hybrid = reciprocal-rank fusion). hit@k: an answer string is in the top k; gold@k: the question's "
            "own paragraph is.\n\n" + table(head, rows)
            + f"\n\nBest hit@20: {best} ({num(c[best]['hit@20'] * 100)}%).")


def plot(res: dict, path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, metric in zip(axes, ("hit", "gold")):
        for mode in SEARCH_MODES:
            ax.plot(KS, [res["curves"][mode][f"{metric}@{k}"] for k in KS], label=mode)
        ax.set_xscale("log")
        ax.set_xlabel("k (passages retrieved)")
        ax.set_title(f"{metric}@k")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("fraction of questions")
    axes[0].legend()
    fig.suptitle(f"Retrieval quality, bundled SQuAD dev sample ({res['questions']:,} questions, "
                 f"{res['passages']:,} passages)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS = {"retrieval-quality": plot}
