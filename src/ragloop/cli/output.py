"""What the commands print, formatted in one place: result tables, passage snippets, source notes.

    >>> print(format_table([{"mode": "bm25", "questions": 10, "hit@5": 0.8}]))
    | mode | questions | hit@5 |
    |---|---|---|
    | bm25 | 10 | 0.800 |
    >>> snippet("Hamlet was written by Shakespeare.", {"start": 22, "end": 33})
    'Hamlet was written by «Shakespeare».'
    >>> counted(1, "passage"), counted(3, "passage")
    ('1 passage', '3 passages')
"""

from __future__ import annotations


def _cell(value) -> str:
    """A table cell: a score to three places; text (a reranker's name, a precision) as it is."""
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, (int, float)) else str(value)


def format_table(results: list[dict]) -> str:
    """`evaluate_retrieval` rows as a Markdown table: mode, questions, then every figure."""
    keys = [k for k in results[0] if k not in ("mode", "questions", "answers_not_in_context")]
    head = f"| mode | questions | {' | '.join(keys)} |"
    rule = "|" + "---|" * (len(keys) + 2)
    rows = [f"| {r['mode']} | {r['questions']} | " + " | ".join(_cell(r.get(k)) for k in keys) + " |"
            for r in results]
    return "\n".join([head, rule, *rows])


def snippet(text: str, copied: dict | None, width: int = 160) -> str:
    """About `width` characters of a passage, with the span the answer copied «marked» and in view."""
    if copied is None:
        return text if len(text) <= width else text[:width] + "..."
    start, end = copied["start"], copied["end"]
    lo = 0 if end <= width else max(0, start - 40)
    hi = max(lo + width, end)
    before, after = ("..." if lo else ""), ("..." if hi < len(text) else "")
    return f"{before}{text[lo:start]}«{text[start:end]}»{text[end:hi]}{after}"


def counted(n: int, noun: str) -> str:
    """"1 passage", "3 passages": a count with its noun in the number it takes."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def from_source(source: str) -> str:
    """', from FILE' after a passage id, when the index recorded where the passage was read."""
    return f", from {source}" if source else ""


def precision(quantized: str | None) -> str:
    """', int8 encoder' after a summary's figures, when a model ran quantized."""
    return f", {quantized} encoder" if quantized else ""


def report_training(result: dict, speed: str, dev: str) -> None:
    """The closing lines a trainer's command prints: steps, `speed`, the final loss, and the dev metrics
    at k (`dev` names the evaluation) when there was validation data."""
    print(f"trained {result['steps']} steps in {result['seconds']:.0f}s{speed}, final loss {result['final_loss']:.4f}")
    if result["validation"]:
        v = result["validation"]
        print(f"dev ({dev(v) if callable(dev) else dev}): " + " ".join(f"{k}={v[k]}" for k in v if "@" in k))


def print_combinations(combination: dict[str, dict]) -> None:
    """A reranker's "combination" entry (`rerank_fusion.entries`) as a table: per first stage, what the
    reranking stage uses and the held-out gold@1 behind that choice."""
    print("| first stage | use | held-out gold@1: first stage | reranked | combined | questions |")
    print("|---|---|---|---|---|---|")
    for mode, c in combination.items():
        g, n = c["held_out"]["gold@1"], c["held_out"]["questions"]
        print(f"| {mode} | {c['use']} | {g['first_stage']:.3f} | {g['rerank']:.3f} | {g['combination']:.3f} | {n} |")
