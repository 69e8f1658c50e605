"""`ragloop serve`: answers and search over HTTP (FastAPI): the own API, /v1 OpenAI-compatible, the page.

    $ ragloop serve runs/rag/best_model --port 8000
"""

from __future__ import annotations

import argparse
import sys

from ragloop.cli.options import POSITIVE, HelpFormatter, add_cache_options, add_model_options, number, whole
from ragloop.errors import RagloopError


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="serve answers and search over HTTP (FastAPI)",
                       formatter_class=HelpFormatter)
    p.add_argument("model_dir", help="a saved RAG model folder (or an index folder: /search only)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=whole(0, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=POSITIVE, default=16, help="questions per model call at most (default 16)")
    p.add_argument("--max-wait-ms", type=number(0.0), default=10.0,
                   help="how long a request waits for others to share its model call (default 10)")
    p.add_argument("--threads", type=int, help="torch/FAISS threads (default: the cores this process may use)")
    p.add_argument("--api-key", help="require it as 'Authorization: Bearer KEY' (default: $RAGLOOP_API_KEY; "
                   "needed off 127.0.0.1)")
    p.add_argument("--no-auth", action="store_true", help="serve off 127.0.0.1 without an API key")
    add_model_options(p, add_cache_options)
    p.set_defaults(func=run)


def run(args) -> None:
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
    url = f"http://{host}:{sock.getsockname()[1]}"
    print(f"serving {args.model_dir} on {url}/ (API docs at /docs; OpenAI-compatible clients: base_url {url}/v1; "
          "Ctrl-C stops)", flush=True)
    serve(app, log_level="warning" if args.quiet else "info", sock=sock)
