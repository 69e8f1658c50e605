"""Read rows out of local files (SQuAD JSON, JSONL, CSV, text) or a Hugging Face dataset by name.

Every reader yields plain dicts plus a location string ("file.jsonl:12") so that errors can say
exactly where a bad record is.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from ragloop.data.bundled import is_bundled, resolve_bundled
from ragloop.errors import RagloopError

log = logging.getLogger(__name__)

DOC_SUFFIXES = {".txt", ".md"}
RECORD_SUFFIXES = {".json", ".jsonl", ".csv", ".tsv"}  # .tsv: e.g. DPR's psgs_w100.tsv

Row = tuple[dict, str]  # (record, location)

# a JSON escape of a UTF-16 surrogate: json decodes an unpaired one into a str that cannot be encoded
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def check_text(value, where: str) -> None:
    """Every string in `value` (nested lists/dicts too) is valid Unicode: no unpaired surrogates."""
    todo = [value]
    while todo:  # a loop, not recursion: the JSON may be nested as deep as the parser allows
        item = todo.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise RagloopError(f"{where}: text is not valid Unicode (an unpaired surrogate such as "
                                  "\\ud800)") from None
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


def _json_loads(text: str, where: str, with_line: bool = False):
    """json.loads with every failure (bad syntax, nesting too deep, a number too long) as a RagloopError."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        line = f":{e.lineno}" if with_line else ""
        raise RagloopError(f"{where}{line}: not valid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:
        raise RagloopError(f"{where}: not valid JSON ({str(e)[:120] or 'nested too deeply'})") from None
    if SURROGATE_ESCAPE.search(text):
        check_text(obj, where)
    return obj


def content_id(text: str) -> str:
    """A stable id for a piece of text: same text, same id, on every machine."""
    return hashlib.sha1(" ".join(text.split()).encode("utf-8")).hexdigest()[:16]


def named_files(sources: list[str | Path]) -> list[tuple[Path, str]]:
    """(file, name) for the files named directly, `bundled:NAME` files, and the readable files inside
    named folders (sorted, recursive). The name is what a passage records as its `source`: relative to
    the folder holding what was named (`docs/sub/a.md` for the folder docs, wherever it is; `faq.jsonl`
    for a file), a bundled file by its `bundled:` name; never a path of the machine that indexed it."""
    out: list[tuple[Path, str]] = []
    for src in sources:
        bundled = resolve_bundled(src)
        if bundled is not None:
            out.append((bundled, str(src)))
            continue
        path = Path(src)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES | RECORD_SUFFIXES
            )
            if not found:
                raise RagloopError(f"{path}: folder holds no .txt, .md, .json, .jsonl, .csv or .tsv files")
            top = Path(path.resolve().name)  # "docs" for docs/, /srv/docs or . inside docs
            out.extend((p, (top / p.relative_to(path)).as_posix()) for p in found)
        elif path.is_file():
            out.append((path, path.name))
        else:
            raise RagloopError(f"{path}: no such file or folder")
    return out


def expand_paths(sources: list[str | Path]) -> list[Path]:
    """The files of `named_files`, without their names."""
    return [path for path, _ in named_files(sources)]


def is_local(source: str | Path) -> bool:
    """A local path (or a bundled file) if it exists or has a file suffix we read; otherwise a Hugging
    Face dataset name."""
    if is_bundled(source):
        return True
    path = Path(source)
    return path.exists() or path.suffix.lower() in DOC_SUFFIXES | RECORD_SUFFIXES


def read_rows(path: Path) -> Iterator[Row]:
    """Rows of a .json (SQuAD nested, or a list of objects), .jsonl, .csv or .tsv file (CSV quoting, tab
    separated, a header row: DPR's `psgs_w100.tsv` with id, text, title). CSV and TSV are streamed."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".csv":
        yield from _read_csv(path)
    elif suffix == ".tsv":
        yield from _read_csv(path, delimiter="\t")
    else:
        raise RagloopError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl, .csv or .tsv)")


def first_row(path: Path) -> Row | None:
    """The first record of a .json/.jsonl/.csv/.tsv file (None when it has none), read by `read_rows`
    itself and no further: what it checks before the first record is checked here too (a CSV's header
    row, a JSONL file's first line, a JSON file's syntax and top-level shape: a .json file is parsed
    whole, as reading it does). So a bad file can be named before any model loads."""
    rows = read_rows(path)
    try:
        return next(rows, None)
    finally:
        rows.close()


def _read_jsonl(path: Path) -> Iterator[Row]:
    with path.open("rb") as f:  # bytes, decoded line by line, so a bad byte is reported at its line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise RagloopError(f"{path}:{lineno}: not UTF-8 text ({e.reason})") from None
            if not line.strip():
                continue
            row = _json_loads(line, f"{path}:{lineno}")
            if not isinstance(row, dict):
                raise RagloopError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield row, f"{path}:{lineno}"


def _read_json(path: Path) -> Iterator[Row]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RagloopError(f"{path}: not UTF-8 text ({e.reason})") from None
    obj = _json_loads(text, str(path), with_line=True)
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        yield from _squad_rows(obj["data"], path)
    elif isinstance(obj, list):
        for i, row in enumerate(obj):
            if not isinstance(row, dict):
                raise RagloopError(f"{path}: item {i} is a {type(row).__name__}, expected an object")
            yield row, f"{path}[{i}]"
    else:
        raise RagloopError(f"{path}: expected SQuAD JSON ({{'data': [...]}}) or a list of objects")


def _squad_rows(articles: list, path: Path) -> Iterator[Row]:
    """Flatten SQuAD's articles -> paragraphs -> qas into one row per question (or per bare paragraph)."""
    for a, article in enumerate(articles):
        where = f"{path}: data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise RagloopError(f"{where}: a SQuAD article needs a 'paragraphs' list")
        title = str(article.get("title", "")).replace("_", " ")
        for p, para in enumerate(article["paragraphs"]):
            if not isinstance(para, dict) or not isinstance(para.get("context"), str):
                raise RagloopError(f"{where}.paragraphs[{p}]: needs a 'context' string")
            qas = para.get("qas") or []
            if not qas:  # a paragraph without questions (a filtered file): a passage, no QA example
                yield {"title": title, "context": para["context"], "qas": []}, f"{where}.paragraphs[{p}]"
            for q, qa in enumerate(qas):
                if not isinstance(qa, dict):
                    raise RagloopError(f"{where}.paragraphs[{p}].qas[{q}]: expected an object")
                row = {
                    "id": qa.get("id"),
                    "title": title,
                    "context": para["context"],
                    "question": qa.get("question"),
                    "answers": qa.get("answers", []),
                    "is_impossible": qa.get("is_impossible", False),
                }
                yield row, f"{where}.paragraphs[{p}].qas[{q}]"


def _read_csv(path: Path, delimiter: str = ",") -> Iterator[Row]:
    kind = "TSV" if delimiter == "\t" else "CSV"
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: spreadsheets often start with a BOM
        reader = csv.DictReader(f, delimiter=delimiter)
        rows = enumerate(reader, 2)
        while True:
            try:
                if reader.fieldnames is None or not any(reader.fieldnames):
                    raise RagloopError(f"{path}: empty {kind} (no header row)")
                lineno, row = next(rows, (0, None))
            except UnicodeDecodeError as e:
                raise RagloopError(f"{path}:{reader.line_num + 1}: not UTF-8 text ({e.reason})") from None
            except csv.Error as e:
                raise RagloopError(f"{path}:{reader.line_num}: not valid {kind} ({e})") from None
            if row is None:
                return
            if None in row:
                raise RagloopError(f"{path}:{lineno}: more fields than the header has")
            yield dict(row), f"{path}:{lineno}"


def read_text_document(path: Path) -> dict:
    """A .txt/.md file as one document; the title is the first Markdown heading or the file name."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RagloopError(f"{path}: not UTF-8 text ({e.reason})") from None
    title = path.stem.replace("_", " ")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip():
            if line.lstrip().startswith("#"):
                title = line.lstrip("# ").strip() or title
                text = "\n".join(lines[i + 1 :])
            break
    return {"title": title, "text": text}


def read_hub_dataset(name: str, split: str | None = None) -> Iterator[Row]:
    """Rows of a Hugging Face dataset by name (`squad`), all splits unless one is named. Needs the
    optional `datasets` package (`pip install 'ragloop[datasets]'`); local files do not."""
    try:
        import datasets
    except ImportError:
        raise RagloopError(
            f"{name!r} is not a local file, so it is read as a Hugging Face dataset name, which needs the "
            "`datasets` package: pip install 'ragloop[datasets]' (from a checkout: pip install -e '.[datasets]'), "
            "or pass a local .json/.jsonl/.csv/.tsv file"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # the hub raises many types: connection, offline mode, not found
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RagloopError(
            f"could not load dataset {name!r} from the Hugging Face hub ({first[:160]}); "
            "use local files instead (--train_file/--validation_file to train, --data to evaluate): "
            "SQuAD-format .json, or .jsonl/.csv/.tsv with question/context/answers columns"
        ) from None
    splits = [(split, ds)] if split else list(ds.items())
    for split_name, part in splits:
        for i, row in enumerate(part):
            yield dict(row), f"{name}[{split_name}][{i}]"
