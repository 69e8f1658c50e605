"""`ragloop <command>`: index, search, eval-retrieval, train, train-retriever, train-reranker, eval, answer,
serve, demo.

Library code logs; only this module prints. A `RagloopError` becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ragloop.constants import CACHE_MAX_ENTRIES
from ragloop.errors import RagloopError
from ragloop.retrieval.hybrid import FUSIONS, MODES

log = logging.getLogger("ragloop")


def _progress(args) -> bool | None:
    return False if args.quiet else None  # None: a bar only when stderr is a terminal


# -- commands ---------------------------------------------------------------------------------


def cmd_index(args) -> None:
    from ragloop.data import load_corpus
    from ragloop.retrieval import BiEncoder, Index
    from ragloop.retrieval.shards import build_shard, merge_shards
    from ragloop.training.distributed import launched_world_size

    sharded = args.num_shards is not None or args.shard_id is not None
    if args.merge_shards:
        if args.corpus or args.add or args.shard_id is not None:
            raise RagloopError("--merge-shards takes only --out (and --num-shards, --keep-shards): the shards "
                              "record the corpus, encoder and settings")
        index = merge_shards(args.out, num_shards=args.num_shards, keep_shards=args.keep_shards)
        print(f"merged shards: {len(index)} passages -> {args.out} ({index.manifest['index']['factory']}, "
              f"dim {index.dim})")
        return
    if not args.corpus:
        raise RagloopError("name the documents to index: files, folders or a dataset name")
    if sharded and (args.num_shards is None or args.shard_id is None):
        raise RagloopError("--num-shards and --shard-id go together (or run under torchrun: one shard per process)")
    if (sharded or launched_world_size() > 1) and args.add:
        raise RagloopError("--add extends an index in one process; drop --num-shards/--shard-id or the launcher")
    if sharded and launched_world_size() > 1:
        raise RagloopError("under torchrun every process encodes one shard; drop --num-shards/--shard-id")
    refining = args.refine != "none" or args.refine_factor is not None or args.refine_dtype is not None
    if refining and (args.add or sharded or launched_world_size() > 1):
        raise RagloopError("--refine/--refine-factor/--refine-dtype are build options of a one-process build: "
                          "--add keeps the index's own, and sharded builds do not take them yet")
    if args.add and args.nprobe:
        raise RagloopError("--nprobe is a build option: --add keeps the index's own search settings")
    if args.refine == "none" and (args.refine_factor is not None or args.refine_dtype is not None):
        raise RagloopError("--refine-factor/--refine-dtype set how the disk refine stage works: add --refine disk")
    if not (args.add or sharded or launched_world_size() > 1):  # one process: stream the corpus
        _index_streaming(args)
        return
    passages = load_corpus(args.corpus, args.chunk_words, args.chunk_overlap, split=args.split)
    if args.add:
        index = Index.load(args.out)
        encoder = None  # the manifest's, quantized as the build was
        if args.quantize:
            encoder = index.load_encoder()
            encoder.passage.quantize(args.quantize)
        added = index.add(passages, encoder, batch_size=args.batch_size, progress=_progress(args))
        print(f"added {added} new passages to {args.out} ({len(index)} in all)")
        return
    encoder = BiEncoder.from_pretrained(args.encoder, args.question_encoder)
    options = _index_options(args)
    if sharded:
        import torch

        if torch.cuda.is_available():
            encoder.passage.to("cuda")
        encoder.passage.quantize(args.quantize)
        path = build_shard(passages, encoder, args.out, args.num_shards, args.shard_id, **options)
        print(f"encoded shard {args.shard_id} of {args.num_shards} -> {path}; once all {args.num_shards} are "
              f"built: ragloop index --out {args.out} --merge-shards")
        return
    _index_distributed(args, passages, encoder, options)


def _index_options(args) -> dict:
    return dict(factory=args.index_type, batch_size=args.batch_size, with_bm25=not args.no_bm25,
                progress=_progress(args), search_params={"nprobe": args.nprobe} if args.nprobe else None,
                extra={"chunking": {"words": args.chunk_words, "overlap": args.chunk_overlap}})


def _index_streaming(args) -> None:
    """One process, a new index: passages read, encoded and written --chunk-size at a time."""
    import itertools

    from ragloop.config import INDEX_REFINE_FACTOR
    from ragloop.data import iter_corpus
    from ragloop.retrieval import BiEncoder, Index

    passages = iter_corpus(args.corpus, args.chunk_words, args.chunk_overlap, split=args.split)
    first = next(passages, None)  # an empty corpus is said before the model loads
    if first is None:
        raise RagloopError(f"no passages found in {', '.join(args.corpus)} (is the corpus empty?)")
    encoder = BiEncoder.from_pretrained(args.encoder, args.question_encoder)
    encoder.passage.quantize(args.quantize)
    index = Index.build(itertools.chain([first], passages), encoder, args.out, refine=args.refine,
                        chunk_size=args.chunk_size, refine_factor=args.refine_factor or INDEX_REFINE_FACTOR,
                        refine_dtype=args.refine_dtype or "float32", **_index_options(args))
    refine = f", refine {args.refine} x{index.refine['factor']}" if index.refine else ""
    print(f"indexed {len(index)} passages -> {args.out} ({args.index_type}{refine}, dim {index.dim}"
          f"{_precision(encoder.passage.quantization)})")


def _precision(quantized: str | None) -> str:
    """', int8 encoder' after a summary's figures, when a model ran quantized."""
    return f", {quantized} encoder" if quantized else ""


def _index_distributed(args, passages, encoder, options) -> None:
    """Under torchrun / accelerate launch: process r encodes shard r of P on its device, then process 0
    merges the shards into --out (a folder every process can reach)."""
    from accelerate import PartialState

    from ragloop.retrieval.shards import build_shard, merge_shards
    from ragloop.training.distributed import cpu_distributed, destroy_process_group_at_exit

    state = PartialState(cpu=cpu_distributed())
    destroy_process_group_at_exit()
    encoder.passage.to(state.device)
    encoder.passage.quantize(args.quantize)
    if not state.is_main_process:
        options["progress"] = False
    build_shard(passages, encoder, args.out, state.num_processes, state.process_index, **options)
    state.wait_for_everyone()
    if state.is_main_process:
        index = merge_shards(args.out, num_shards=state.num_processes, keep_shards=args.keep_shards)
        print(f"indexed {len(index)} passages in {state.num_processes} shards -> {args.out} "
              f"({args.index_type}, dim {index.dim})")


def _retriever(args):
    from ragloop.retrieval import Retriever

    return Retriever.from_index(args.index_dir, encoder=args.encoder, fusion=args.fusion, weight=args.weight,
                                rerank=args.rerank, rerank_depth=args.rerank_depth, cache=_cache(args),
                                quantize=args.quantize)


def _cache(args):
    """The retrieval cache the command's flags ask for: on disk (`--cache-dir`), in memory (`answer`,
    `serve`: on unless `--no-cache`), or None."""
    cache_dir, size = getattr(args, "cache_dir", None), getattr(args, "cache_size", None)
    if getattr(args, "no_cache", False) or (cache_dir is None and size is None):
        return None
    from ragloop.retrieval.cache import DEFAULT_MAX_ENTRIES, RetrievalCache

    return RetrievalCache(max_entries=DEFAULT_MAX_ENTRIES if size is None else size, directory=cache_dir)


def cmd_search(args) -> None:
    retriever = _retriever(args)
    hits = retriever.search([args.question], k=args.k, mode=args.mode)[0]
    if args.json:
        quantized = {"quantize": args.quantize} if args.quantize and args.mode != "bm25" else {}
        print(json.dumps({"question": args.question, "mode": args.mode, **quantized,
                          "hits": [h.to_dict() for h in hits]}))
        return
    if not hits:
        print(f"no passages found for {args.question!r} in {args.index_dir} ({args.mode} search)")
        return
    for rank, h in enumerate(hits, 1):
        text = h.passage.text if len(h.passage.text) <= 300 else h.passage.text[:297] + "..."
        print(f"{rank}. [{h.score:.4f}] {h.passage.title} ({h.passage.id}{_from(h.passage.source)})\n   {text}")


def _from(source: str) -> str:
    """', from FILE' after a passage id, when the index recorded where the passage was read."""
    return f", from {source}" if source else ""


def cmd_eval_retrieval(args) -> None:
    from ragloop.data import load_qa
    from ragloop.evaluation import evaluate_retrieval

    examples = load_qa(args.data, split=args.split)
    if args.limit:
        examples = examples[: args.limit]
    retriever = _retriever(args)
    modes = list(MODES) if args.mode == "all" else [args.mode]
    results = [evaluate_retrieval(retriever, examples, tuple(args.k), m, progress=_progress(args)) for m in modes]
    if args.json:
        for r in results:
            print(json.dumps(r))
        return
    print(format_table(results))
    if results[0]["answers_not_in_context"]:
        print(f"note: {results[0]['answers_not_in_context']} of {results[0]['questions']} questions have no answer "
              "in their own context paragraph; hit@k cannot count them")


def _cell(value) -> str:
    """A table cell: a score to three places; text (a reranker's name, a precision) as it is."""
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, (int, float)) else str(value)


def format_table(results: list[dict]) -> str:
    keys = [k for k in results[0] if k not in ("mode", "questions", "answers_not_in_context")]
    head = f"| mode | questions | {' | '.join(keys)} |"
    rule = "|" + "---|" * (len(keys) + 2)
    rows = [f"| {r['mode']} | {r['questions']} | " + " | ".join(_cell(r.get(k)) for k in keys) + " |"
            for r in results]
    return "\n".join([head, rule, *rows])


def cmd_train(args) -> None:
    from ragloop.config import config_from_args
    from ragloop.training import train

    cfg = config_from_args(args)
    result = train(cfg, progress=_progress(args))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch, process 0 reports
        return
    best = f"{result.best_f1:.4f}" if result.best_f1 is not None else "n/a (no validation data)"
    print(f"trained {result.steps} steps; best dev F1 {best}; best model: {result.best_dir}; "
          f"last checkpoint: {result.last_dir}")


def _load_rag(args):
    from ragloop.model import RAG

    model = RAG.from_pretrained(args.model_dir)
    if getattr(args, "index", None):
        from ragloop.retrieval import Index

        model.index = Index.load(args.index)  # checked against the model's question encoder
    if args.rerank or args.rerank_depth:  # another reranker, or another depth for the model's own
        model.retriever.set_reranker(args.rerank or model.retriever.reranker, args.rerank_depth)
    model.retriever.cache = _cache(args)
    if getattr(args, "k", None) is not None:
        from ragloop.retrieval.retriever import check_k

        check_k(args.k, len(model.index), model.index.path)  # k=10**7: one clear error, not a huge allocation
    return model.quantize(args.quantize)


def cmd_eval(args) -> None:
    from ragloop.data import load_qa
    from ragloop.evaluation import evaluate_answers

    if args.closed_book and args.oracle:
        raise RagloopError("choose one of --closed-book and --oracle")
    examples = load_qa(args.data, split=args.split)
    if args.limit:
        examples = examples[: args.limit]
    context = "closed-book" if args.closed_book else "oracle" if args.oracle else "rag"
    if context == "oracle" and any(not ex.context for ex in examples):
        raise RagloopError(f"{args.data}: --oracle needs each question's context paragraph")
    model = _load_rag(args)
    result = evaluate_answers(model, examples, context, k=args.k, num_beams=args.num_beams,
                              progress=_progress(args))
    if args.json:
        print(json.dumps(result))
    else:
        print(" ".join(f"{key}={value}" for key, value in result.items()))


def cmd_answer(args) -> None:
    model = _load_rag(args)
    answers = model.answer(args.question, k=args.k, num_beams=args.num_beams)
    for ans in answers:
        if args.json:
            print(json.dumps(ans.to_dict()))
            continue
        print(f"Q: {ans.question}\nA: {ans.answer}")
        if not ans.passages:
            print("  (no passages found)")
        for i, p in enumerate(ans.passages, 1):
            print(f"  [{i}] {p['title']} ({p['id']}{_from(p.get('source', ''))}, score {p['score']:.3f}): "
                  f"{_snippet(p['text'], p.get('copied'))}")


def _snippet(text: str, copied: dict | None, width: int = 160) -> str:
    """About `width` characters of a passage, with the span the answer copied «marked» and in view."""
    if copied is None:
        return text if len(text) <= width else text[:width] + "..."
    start, end = copied["start"], copied["end"]
    lo = 0 if end <= width else max(0, start - 40)
    hi = max(lo + width, end)
    before, after = ("..." if lo else ""), ("..." if hi < len(text) else "")
    return f"{before}{text[lo:start]}«{text[start:end]}»{text[end:hi]}{after}"


def cmd_serve(args) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise RagloopError(f"serving needs FastAPI and uvicorn ({e.name} is not installed): "
                          "pip install fastapi uvicorn (in the checkout: pip install -e '.[serve]')") from None
    from ragloop.serving import create_app, serve
    from ragloop.serving.server import api_key_for, is_loopback, listen

    api_key = api_key_for(args.host, args.api_key, args.no_auth)
    if not is_loopback(args.host):
        print(f"ragloop: warning: listening on {args.host}, not 127.0.0.1: other machines can reach this API"
              + (", which has no authentication (--no-auth)" if api_key is None else ""), file=sys.stderr)
    app = create_app(args.model_dir, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, threads=args.threads,
                     api_key=api_key, rerank=args.rerank, rerank_depth=args.rerank_depth,
                     cache_size=0 if args.no_cache else args.cache_size, quantize=args.quantize)
    sock = listen(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {args.model_dir} on http://{host}:{sock.getsockname()[1]}/ (API docs at /docs; Ctrl-C stops)",
          flush=True)
    serve(app, log_level="warning" if args.quiet else "info", sock=sock)


def cmd_demo(args) -> None:
    """The main job on the bundled data, offline: the pinned recipe (or --recipe FILE) through
    `ragloop.recipes.demo`: index the SQuAD train + dev contexts, train RAG on the train articles for the
    recipe's fixed number of steps, score held-out questions and dev questions with retrieval, closed
    book and the gold paragraph, and answer a few with their sources."""
    import time

    from ragloop.model import RAG
    from ragloop.recipes import demo, load_recipe

    t_start = time.time()
    recipe = load_recipe(args.recipe)
    questions = args.questions or recipe.questions
    print(f"recipe: {recipe.path}", flush=True)
    out = Path(args.out)
    data = demo.load_data(recipe)
    files = demo.write_data(data, out / "data")
    index_dir = out / "index"
    if not demo.index_exists(index_dir):
        print(f"[1/4] indexing the contexts of {recipe.train_data.name} and {recipe.dev_data.name} ...", flush=True)
    demo.ensure_index(recipe, data, index_dir, progress=_progress(args))
    table = demo.retrieval_table(recipe, data, index_dir)
    print(f"      {index_dir}; retrieval on {table[0]['questions']} dev questions:")
    print(format_table(table))

    cfg = demo.train_config(recipe, files.train, index_dir, out / "rag", steps=args.steps)
    override = cfg.max_steps != recipe.steps
    not_recipe = f"--steps {cfg.max_steps}, not the recipe's {recipe.steps}: these are not the recipe's numbers"
    run = None if args.retrain else demo.trained_earlier(cfg)
    if run is None:
        print(f"\n[2/4] training {cfg.rag_mode} RAG on {len(data.train)} questions of {recipe.train_data.name} "
              f"(every {recipe.holdout_every}th held out: {files.heldout}) for {cfg.max_steps} steps, batch "
              f"{cfg.batch_size}, k={cfg.n_docs}, {cfg.precision} ...", flush=True)
        if override:
            print(f"      {not_recipe}", flush=True)
        run = demo.train_rag(cfg, progress=_progress(args))
        print(f"      model saved to {run.best_dir}")
    else:
        print(f"\n[2/4] using the model trained earlier with these settings in {run.best_dir} "
              "(--retrain to train again)")
    model = RAG.from_pretrained(run.best_dir)

    trained = f"{run.steps} steps of {cfg.batch_size} in {run.seconds / 60:.1f} min of training"
    print(f"\n[3/4] answering {questions} held-out questions of the training articles and {questions} "
          f"questions of dev articles the model never trained on (model: {trained}) ...", flush=True)
    labels = {"rag": "retrieved (RAG)", "closed-book": "none (closed book)", "oracle": "the gold paragraph (oracle)"}
    hit = f"hit@{model.config.n_docs}"
    print(f"| questions | passages read | EM | F1 | {hit} |\n|---|---|---|---|---|")
    for row in demo.score(model, demo.eval_sets(data, questions), progress=_progress(args)):
        print(f"| {row['set']} ({row['questions']}) | {labels[row['context']]} | {row['em']:.3f} | {row['f1']:.3f} "
              f"| {row.get(hit, '')} |", flush=True)

    if recipe.sample_answers:
        print("\n[4/4] sample answers with their sources:")
    for ex, ans in demo.sample_answers(model, data, recipe.sample_answers):
        print(f"\nQ: {ex.question}\nA: {ans.answer}    (gold: {ex.answers[0]})")
        for i, p in enumerate(ans.passages, 1):
            print(f"   [{i}] {p['title']} (score {p['score']:.2f}): {_snippet(p['text'], p.get('copied'), 120)}")
    print(f"\n{recipe.path.name}: {trained}" + (f" ({not_recipe})" if override else "")
          + f"; the demo took {(time.time() - t_start) / 60:.1f} min in all")


# -- parser -----------------------------------------------------------------------------------


def _whole(low: int, high: int | None = None):
    """An argparse type: a whole number in [low, high] ('--limit 0' or '--batch-size -1' is refused)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound} (got {value})")
        return value

    parse.__name__ = "whole number"  # what argparse names in its own messages
    return parse


def _number(low: float, high: float | None = None, above: bool = False):
    """An argparse type: a finite number >= low (> low with `above`) and <= high; NaN and inf refused."""

    def parse(text: str) -> float:
        from ragloop.config import finite_float

        value = finite_float(text)
        if value < low or (above and value == low) or (high is not None and value > high):
            bound = (f"between {low:g} and {high:g}" if high is not None
                     else f"{'above' if above else 'at least'} {low:g}")
            raise argparse.ArgumentTypeError(f"must be {bound} (got {text})")
        return value

    parse.__name__ = "number"
    return parse


POSITIVE = _whole(1)
NON_NEGATIVE = _whole(0)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default: the value, "off" for a flag, or the help's own words
    when they already say it ("default: the one in the index manifest"). Nothing for a required
    option or one whose absence means "not used" (None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.required or action.default is None:
            return text
        if action.nargs == 0:  # a flag: -q, --json (not -h / --version)
            return f"{text} (default: off)" if action.const is True else text
        return super()._get_help_string(action)


def _add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", help="question encoder to query with (default: the one in the index manifest)")
    p.add_argument("--fusion", choices=FUSIONS, default="rrf",
                   help="hybrid fusion: reciprocal rank (rrf) or min-max normalised scores (score)")
    p.add_argument("--weight", type=_number(0.0, 1.0), default=0.5, help="dense weight in hybrid fusion, 0 to 1")
    _add_rerank_options(p)


def _add_rerank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerank", metavar="MODEL_OR_PATH",
                   help="cross-encoder that reorders the first stage's top --rerank-depth (e.g. a folder written "
                        "by `ragloop train-reranker`, or cross-encoder/ms-marco-MiniLM-L-6-v2 online)")
    p.add_argument("--rerank-depth", type=POSITIVE, metavar="N",
                   help="first-stage candidates the reranker rescores (default: max(k, 20); at least k)")


def _add_cache_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cache (repeated questions answered from memory; retrieval/cache.py)")
    g.add_argument("--cache-size", type=NON_NEGATIVE, default=CACHE_MAX_ENTRIES, metavar="N",
                   help="questions' results and answers remembered at most (LRU, also at most 64 MiB)")
    g.add_argument("--no-cache", action="store_true", help="compute every answer and search afresh")


def _add_cache_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR",
                   help="keep retrieval results in DIR, so a repeated run skips retrieval (keyed by the index, "
                        "encoder and reranker: a changed one misses)")


def _add_quantize_option(p: argparse.ArgumentParser, what: str) -> None:
    from ragloop.quantize import QUANTIZE_MODES

    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help=f"quantize {what} for inference: int8 dynamic quantization of the linear layers on "
                        "CPU (bf16 weights on CUDA); faster, slightly different scores (default: full precision)")


class _RefuseQuantize(argparse.Action):
    """--quantize on a training command: one clear argparse error (training needs float32 weights)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error("--quantize is for inference (index, search, eval-retrieval, answer, eval, serve): "
                     "training needs full-precision weights, and a quantized model cannot be saved")


def _refuse_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", action=_RefuseQuantize, help=argparse.SUPPRESS)


def _add_common_options(p: argparse.ArgumentParser, default) -> None:
    """-q/-v, accepted before the command (`ragloop -q search ...`) and after it: the command's copy
    defaults to SUPPRESS so that it does not undo a flag given before the command."""
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars or info logs")
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logs")


def cmd_train_retriever(args) -> None:
    from ragloop.config import RetrieverTrainConfig, config_from_args
    from ragloop.training.retriever_trainer import train_retriever

    cfg = config_from_args(args, RetrieverTrainConfig)
    result = train_retriever(cfg, progress=False if getattr(args, "quiet", False) else None)
    print(f"trained {result['steps']} steps in {result['seconds']:.0f}s, final loss {result['final_loss']:.4f}")
    if result["validation"]:
        v = result["validation"]
        print("dev (dense): " + " ".join(f"{k}={v[k]}" for k in v if "@" in k))
    if result["shared"]:
        print(f"encoder: {result['output_dir']}\n"
              f"index with: ragloop index CORPUS --out INDEX --encoder {result['output_dir']}")
    else:
        print(f"encoders: {result['question_encoder']}, {result['passage_encoder']}\n"
              f"index with: ragloop index CORPUS --out INDEX --encoder {result['passage_encoder']} "
              f"--question-encoder {result['question_encoder']}")


def cmd_train_reranker(args) -> None:
    from ragloop.config import RerankerTrainConfig, config_from_args
    from ragloop.training.reranker_trainer import train_reranker

    cfg = config_from_args(args, RerankerTrainConfig)
    result = train_reranker(cfg, progress=False if getattr(args, "quiet", False) else None)
    print(f"trained {result['steps']} steps in {result['seconds']:.0f}s ({result['seconds_per_step']:.2f}s a step, "
          f"after {result['data_seconds']:.0f}s finding negatives), final loss {result['final_loss']:.4f}")
    if result["validation"]:
        v = result["validation"]
        print(f"dev ({v['questions']} questions, BM25 top {v['candidates']}): "
              + " ".join(f"{k}={v[k]}" for k in v if "@" in k))
    print(f"reranker: {result['output_dir']} (Reranker.from_pretrained({result['output_dir']!r}))")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; builds without importing torch, so `--help` answers at once."""
    from ragloop._version import __version__
    from ragloop.config import (
        DEFAULT_ENCODER,
        INDEX_CHUNK_SIZE,
        INDEX_REFINE_FACTOR,
        RerankerTrainConfig,
        RetrieverTrainConfig,
        add_config_args,
    )

    parser = argparse.ArgumentParser(prog="ragloop", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ragloop {__version__}")
    _add_common_options(parser, default=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", parents=[common], help="chunk, encode and index documents or QA contexts")
    p.add_argument("corpus", nargs="*", help="files/folders (.txt .md .json .jsonl .csv .tsv, e.g. DPR's "
                   "psgs_w100.tsv) or a HF dataset name")
    p.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="passage encoder name or path (default: MiniLM)")
    p.add_argument("--question-encoder", help="question encoder, if not the same model (DPR: inferred)")
    p.add_argument("--index-type", default="Flat", help="FAISS factory string: Flat, HNSW32, IVF256,PQ32 ...")
    p.add_argument("--chunk-words", type=POSITIVE, default=100, help="words per passage (default 100)")
    p.add_argument("--chunk-overlap", type=NON_NEGATIVE, default=0, help="words shared by neighbouring passages")
    p.add_argument("--batch-size", type=POSITIVE, default=64)
    p.add_argument("--split", help="dataset split, for a HF dataset name (default: all)")
    p.add_argument("--no-bm25", action="store_true", help="skip the BM25 index")
    p.add_argument("--add", action="store_true", help="add to the existing index at --out")
    p.add_argument("--nprobe", type=POSITIVE, default=None,
                   help="IVF lists a search visits, kept in the manifest (default 16); more finds more of the true "
                   "top k, which a refine stage can only re-rank, not add")
    p.add_argument("--chunk-size", type=POSITIVE, default=INDEX_CHUNK_SIZE,
                   help=f"passages read, encoded and written at a time: bounds peak RAM (default {INDEX_CHUNK_SIZE})")
    g = p.add_argument_group("re-ranking from disk (compressed index types: IVF-PQ, OPQ, fast-scan PQ...x4fs)")
    g.add_argument("--refine", choices=("none", "disk"), default="none",
                   help="disk: keep the exact vectors in the folder (vectors.npy, memory-mapped, not in RAM) and "
                   "re-score the index's top k x FACTOR with them; vectors for RAG are exact too")
    g.add_argument("--refine-factor", type=POSITIVE,
                   help=f"candidates per result to re-score (default {INDEX_REFINE_FACTOR})")
    g.add_argument("--refine-dtype", choices=("float32", "float16"), help="vectors.npy precision (default float32)")
    _add_quantize_option(p, "the passage encoder (recorded in the manifest; queries may use either precision)")
    g = p.add_argument_group("sharded indexing (under torchrun: one shard per process, merged automatically)")
    g.add_argument("--num-shards", type=POSITIVE, help="split the encoding into N shards (with --shard-id)")
    g.add_argument("--shard-id", type=NON_NEGATIVE, help="encode only shard I (0..N-1) into OUT.shards/shard-I-of-N")
    g.add_argument("--merge-shards", action="store_true", help="join the shards in OUT.shards/ into the index --out")
    g.add_argument("--keep-shards", action="store_true", help="keep OUT.shards/ after merging")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", parents=[common], help="search an index", formatter_class=HelpFormatter)
    p.add_argument("index_dir", help="an index folder written by `ragloop index`")
    p.add_argument("question", help="the question to search for")
    p.add_argument("-k", type=POSITIVE, default=5, help="passages to show")
    p.add_argument("--mode", choices=MODES, default="dense",
                   help="dense: question encoder + FAISS; bm25: shared words, no model loaded; hybrid: both, fused")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_search_options(p)
    _add_quantize_option(p, "the question encoder")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval-retrieval", parents=[common], help="hit@k, gold@k, mrr@10 on QA data",
                       formatter_class=HelpFormatter)
    p.add_argument("index_dir", help="an index folder written by `ragloop index`")
    p.add_argument("--data", required=True, help="SQuAD-style .json/.jsonl/.csv or a HF dataset name")
    p.add_argument("--split", help="dataset split, for a HF dataset name (default validation)")
    p.add_argument("-k", type=POSITIVE, nargs="+", default=[1, 5, 20], help="cut-offs for hit@k and gold@k")
    p.add_argument("--mode", choices=[*MODES, "all"], default="dense",
                   help="search mode to score; all: dense, bm25 and hybrid, one row each")
    p.add_argument("--limit", type=POSITIVE, help="only the first N questions")
    p.add_argument("--json", action="store_true", help="print one JSON object per mode")
    _add_cache_dir_option(p)
    _add_search_options(p)
    _add_quantize_option(p, "the question encoder")
    p.set_defaults(func=cmd_eval_retrieval)

    p = sub.add_parser("train", parents=[common], help="train RAG end to end (question encoder + generator)")
    add_config_args(p)
    _refuse_quantize(p)
    p.set_defaults(func=cmd_train)

    # the trainers import torch: registered here from their configs, so `--help` stays light
    p = sub.add_parser("train-retriever", parents=[common],
                       help="fine-tune the retrieval encoder(s) on QA data (in-batch + BM25 hard negatives)")
    add_config_args(p, RetrieverTrainConfig)
    _refuse_quantize(p)
    p.set_defaults(func=cmd_train_retriever)

    p = sub.add_parser("train-reranker", parents=[common],
                       help="fine-tune a cross-encoder reranker on QA data (BM25 + dense hard negatives)")
    add_config_args(p, RerankerTrainConfig)
    _refuse_quantize(p)
    p.set_defaults(func=cmd_train_reranker)

    p = sub.add_parser("eval", parents=[common], help="EM/F1 of a trained RAG model on QA data")
    p.add_argument("model_dir", help="a folder written by training (e.g. runs/rag/best_model)")
    p.add_argument("--data", required=True, help="SQuAD-style .json/.jsonl/.csv or a HF dataset name")
    p.add_argument("--split", help="dataset split, for a HF dataset name (default validation)")
    p.add_argument("--index", help="search this index instead of the model's own (same passage encoder)")
    p.add_argument("-k", type=POSITIVE, help="passages per question (default: the model's n_docs)")
    p.add_argument("--num-beams", "--num_beams", dest="num_beams", type=POSITIVE, default=1)
    p.add_argument("--limit", type=POSITIVE, help="only the first N questions")
    p.add_argument("--closed-book", action="store_true", help="answer without passages")
    p.add_argument("--oracle", action="store_true", help="answer from the question's own paragraph")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_cache_dir_option(p)
    _add_rerank_options(p)
    _add_quantize_option(p, "the question encoder and the generator")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("answer", parents=[common], help="answer questions with their sources")
    p.add_argument("model_dir")
    p.add_argument("question", nargs="+")
    p.add_argument("--index", help="search this index instead of the model's own")
    p.add_argument("-k", type=POSITIVE, help="passages per question (default: the model's n_docs)")
    p.add_argument("--num-beams", "--num_beams", dest="num_beams", type=POSITIVE, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object per question")
    _add_cache_options(p)
    _add_rerank_options(p)
    _add_quantize_option(p, "the question encoder and the generator")
    p.set_defaults(func=cmd_answer)

    p = sub.add_parser("serve", parents=[common], help="serve answers and search over HTTP (FastAPI)")
    p.add_argument("model_dir", help="a saved RAG model folder (or an index folder: /search only)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_whole(0, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=POSITIVE, default=16, help="questions per model call at most (default 16)")
    p.add_argument("--max-wait-ms", type=_number(0.0), default=10.0,
                   help="how long a request waits for others to share its model call (default 10)")
    p.add_argument("--threads", type=int, help="torch/FAISS threads (default: the cores this process may use)")
    p.add_argument("--api-key", help="require it as 'Authorization: Bearer KEY' (default: $RAGLOOP_API_KEY; "
                   "needed off 127.0.0.1)")
    p.add_argument("--no-auth", action="store_true", help="serve off 127.0.0.1 without an API key")
    _add_cache_options(p)
    _add_rerank_options(p)
    _add_quantize_option(p, "the question encoder and the generator")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", parents=[common], help="index, train, evaluate and answer on the bundled SQuAD data")
    p.add_argument("--out", default="runs/demo", help="where the index and the model go (default runs/demo)")
    p.add_argument("--recipe", metavar="FILE",
                   help="a recipe file (JSON: models, k, learning rates, batch, steps, data; see "
                        "ragloop/recipes/demo.json; default: the pinned demo recipe)")
    p.add_argument("--steps", type=POSITIVE,
                   help="train this many steps instead of the recipe's (the output says the numbers are not the "
                        "recipe's; default: the recipe's)")
    p.add_argument("--questions", type=POSITIVE, help="questions to score in each held-out set (default: the "
                   "recipe's)")
    p.add_argument("--retrain", action="store_true",
                   help="train again even if --out holds a model trained with the same settings")
    p.set_defaults(func=cmd_demo)
    return parser


def quiet_libraries() -> None:
    """Library chatter a user does not need: transformers' info and warnings, hub retry warnings.
    Without importing them (a BM25 search never loads transformers): their verbosity variables are
    read when they are first imported; a library already imported is told directly."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    if "transformers" in sys.modules:  # main() called in a process that has loaded it already
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    for name in ("bm25s", "datasets", "faiss", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_guarded(fn, *args) -> int:
    """Run a command: a RagloopError is one line on stderr and exit 2, never a traceback."""
    quiet_libraries()
    try:
        fn(*args)
    except RagloopError as e:
        print(f"ragloop: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, a full disk, a path that is a file: the OS said what and where
        print(f"ragloop: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ragloop: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    return run_guarded(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
