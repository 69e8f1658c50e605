"""The benchmark suite behind `python -m bench`: one module per section (TITLE, PLOTS, run(ctx),
report(result), optionally goals(result) and options(argument_group)), shared measurement helpers in
`common` (timing, alternating rounds, spans, machine) and `tables` (markdown, numbers, progress)."""
