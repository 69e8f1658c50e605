"""`ragloop index`: chunk, encode and index documents, in one process (streaming), in shards, under
torchrun, or added to an existing index. The build options become one `IndexSettings`.

    $ ragloop index docs/ --out runs/idx --index-type "IVF256,PQ32" --refine disk
    $ ragloop index docs/ --out runs/idx --num-shards 2 --shard-id 0     # then --merge-shards
    >>> add_parser(sub, common); run(parser.parse_args(["index", "docs/", "--out", "runs/idx"]))
"""

from __future__ import annotations

import argparse

from ragloop.cli.options import NON_NEGATIVE, POSITIVE, HelpFormatter, add_quantize_option, progress
from ragloop.cli.output import counted, precision
from ragloop.constants import DEFAULT_ENCODER, INDEX_CHUNK_SIZE, INDEX_REFINE_FACTOR
from ragloop.errors import RagloopError


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("index", parents=[common], help="chunk, encode and index documents or QA contexts",
                       formatter_class=HelpFormatter)
    p.add_argument("corpus", nargs="*", help="files/folders (.txt .md .json .jsonl .csv .tsv, e.g. DPR's "
                   "psgs_w100.tsv) or a HF dataset name")
    p.add_argument("--out", required=True, help="index folder to write (replaced atomically)")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="passage encoder name or path (default: MiniLM)")
    p.add_argument("--question-encoder", help="question encoder, if not the same model (DPR: inferred)")
    p.add_argument("--index-type", default="Flat", help="FAISS factory string: Flat, HNSW32, IVF256,PQ32 ...")
    p.add_argument("--chunk-words", type=POSITIVE, default=100, help="words per passage (default 100)")
    p.add_argument("--chunk-overlap", type=NON_NEGATIVE, default=0, help="words shared by neighbouring passages")
    p.add_argument("--batch-size", type=POSITIVE, default=64, help="passages the encoder reads at a time")
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
    add_quantize_option(p, "the passage encoder (recorded in the manifest; queries may use either precision)")
    g = p.add_argument_group("sharded indexing (under torchrun: one shard per process, merged automatically)")
    g.add_argument("--num-shards", type=POSITIVE, help="split the encoding into N shards (with --shard-id)")
    g.add_argument("--shard-id", type=NON_NEGATIVE, help="encode only shard I (0..N-1) into OUT.shards/shard-I-of-N")
    g.add_argument("--merge-shards", action="store_true", help="join the shards in OUT.shards/ into the index --out")
    g.add_argument("--keep-shards", action="store_true", help="keep OUT.shards/ after merging")
    p.set_defaults(func=run)


def run(args) -> None:
    """Every input is checked before a model loads: the flags, the build settings, --out (an index to
    add to, or a place a new one may be written) and every file's header (`iter_corpus`)."""
    from ragloop.data import load_corpus
    from ragloop.retrieval import BiEncoder
    from ragloop.retrieval.folder import check_target
    from ragloop.training.distributed import launched_world_size

    if args.merge_shards:
        return _merge(args)
    sharded = args.num_shards is not None or args.shard_id is not None
    launched = launched_world_size() > 1
    _check_flags(args, sharded, launched)
    if args.add:
        return _add(args)
    settings = index_settings(args)
    check_target(args.out)
    if not (sharded or launched):  # one process: stream the corpus
        return _index_streaming(args, settings)
    passages = load_corpus(args.corpus, args.chunk_words, args.chunk_overlap, split=args.split)
    encoder = BiEncoder.from_pretrained(args.encoder, args.question_encoder)
    if sharded:
        return _index_shard(args, settings, passages, encoder)
    _index_distributed(args, settings, passages, encoder)


def _check_flags(args, sharded: bool, launched: bool) -> None:
    """Which flags go together: the ways of building (one process, --add, shards, torchrun) exclude
    each other's options. The values themselves are checked by `IndexSettings`."""
    if not args.corpus:
        raise RagloopError("name the documents to index: files, folders or a dataset name")
    if sharded and (args.num_shards is None or args.shard_id is None):
        raise RagloopError("--num-shards and --shard-id go together (or run under torchrun: one shard per process)")
    if (sharded or launched) and args.add:
        raise RagloopError("--add extends an index in one process; drop --num-shards/--shard-id or the launcher")
    if sharded and launched:
        raise RagloopError("under torchrun every process encodes one shard; drop --num-shards/--shard-id")
    refining = args.refine != "none" or args.refine_factor is not None or args.refine_dtype is not None
    if refining and (args.add or sharded or launched):
        raise RagloopError("--refine/--refine-factor/--refine-dtype are build options of a one-process build: "
                          "--add keeps the index's own, and sharded builds do not take them yet")
    if args.add and args.nprobe:
        raise RagloopError("--nprobe is a build option: --add keeps the index's own search settings")
    if args.refine == "none" and (args.refine_factor is not None or args.refine_dtype is not None):
        raise RagloopError("--refine-factor/--refine-dtype set how the disk refine stage works: add --refine disk")


def index_settings(args):
    """The build options the flags ask for, as one `IndexSettings` (a flag left out: the default)."""
    from ragloop.retrieval.settings import IndexSettings

    given = {"refine": args.refine, "refine_factor": args.refine_factor, "refine_dtype": args.refine_dtype,
             "search_params": {"nprobe": args.nprobe} if args.nprobe else None}
    return IndexSettings.of(factory=args.index_type, with_bm25=not args.no_bm25, chunk_size=args.chunk_size,
                            batch_size=args.batch_size, quantize=args.quantize,
                            **{key: value for key, value in given.items() if value is not None})


def _chunking(args) -> dict:
    """The manifest entry that records how the documents were cut into passages."""
    return {"chunking": {"words": args.chunk_words, "overlap": args.chunk_overlap}}


def _merge(args) -> None:
    from ragloop.retrieval.shards import merge_shards

    if args.corpus or args.add or args.shard_id is not None:
        raise RagloopError("--merge-shards takes only --out (and --num-shards, --keep-shards): the shards "
                          "record the corpus, encoder and settings")
    index = merge_shards(args.out, num_shards=args.num_shards, keep_shards=args.keep_shards)
    print(f"merged shards: {counted(len(index), 'passage')} -> {args.out} ({index.manifest['index']['factory']}, "
          f"dim {index.dim})")


def _add(args) -> None:
    """--add: the index at --out is opened first, then the corpus read whole, then its encoder loads."""
    from ragloop.data import load_corpus
    from ragloop.retrieval import Index

    with Index.load(args.out) as index:
        passages = load_corpus(args.corpus, args.chunk_words, args.chunk_overlap, split=args.split)
        encoder = None  # the manifest's, quantized as the build was
        if args.quantize:
            encoder = index.load_encoder()
            encoder.passage.quantize(args.quantize)
        added = index.add(passages, encoder, batch_size=args.batch_size, progress=progress(args))
        print(f"added {counted(added, 'new passage')} to {args.out} ({len(index)} in all)")


def _index_streaming(args, settings) -> None:
    """One process, a new index: passages read, encoded and written --chunk-size at a time."""
    import itertools

    from ragloop.data import iter_corpus
    from ragloop.retrieval import BiEncoder, Index

    passages = iter_corpus(args.corpus, args.chunk_words, args.chunk_overlap, split=args.split)  # headers read
    # the first chunk is read before the model loads (a small corpus whole): a bad record in it, or an
    # empty corpus, is said in a second; a bad record further on stops the build, and nothing is written
    head = list(itertools.islice(passages, settings.chunk_size))
    if not head:
        raise RagloopError(f"no passages found in {', '.join(args.corpus)} (is the corpus empty?)")
    encoder = BiEncoder.from_pretrained(args.encoder, args.question_encoder)
    index = Index.build(itertools.chain(head, passages), encoder, args.out, settings, progress=progress(args),
                        extra=_chunking(args))
    refine = f", refine {args.refine} x{index.refine['factor']}" if index.refine else ""
    print(f"indexed {counted(len(index), 'passage')} -> {args.out} ({args.index_type}{refine}, dim {index.dim}"
          f"{precision(encoder.passage.quantization)})")


def _index_shard(args, settings, passages, encoder) -> None:
    """--num-shards N --shard-id I: this process encodes shard I (on the GPU if there is one)."""
    import torch

    from ragloop.retrieval.shards import build_shard

    if torch.cuda.is_available():
        encoder.passage.to("cuda")
    path = build_shard(passages, encoder, args.out, args.num_shards, args.shard_id, settings,
                       progress=progress(args), extra=_chunking(args))
    print(f"encoded shard {args.shard_id} of {args.num_shards} -> {path}; once all {args.num_shards} are "
          f"built: ragloop index --out {args.out} --merge-shards")


def _index_distributed(args, settings, passages, encoder) -> None:
    """Under torchrun / accelerate launch: process r encodes shard r of P on its device, then process 0
    merges the shards into --out (a folder every process can reach)."""
    from accelerate import PartialState

    from ragloop.retrieval.shards import build_shard, merge_shards
    from ragloop.training.distributed import cpu_distributed, destroy_process_group_at_exit

    state = PartialState(cpu=cpu_distributed())
    destroy_process_group_at_exit()
    encoder.passage.to(state.device)
    build_shard(passages, encoder, args.out, state.num_processes, state.process_index, settings,
                progress=progress(args) if state.is_main_process else False, extra=_chunking(args))
    state.wait_for_everyone()
    if state.is_main_process:
        index = merge_shards(args.out, num_shards=state.num_processes, keep_shards=args.keep_shards)
        print(f"indexed {counted(len(index), 'passage')} in {state.num_processes} shards -> {args.out} "
              f"({args.index_type}, dim {index.dim})")
