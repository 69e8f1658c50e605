"""A retrieval corpus of ~100,000 passages with answerable questions, for index scale work (issue 14).

    python -m bench.scripts.make_corpus --out /work/cache/big                    # 100,000 documents (default)
    python -m bench.scripts.make_corpus --passages 3000 --out /tmp/corpus-small  # a quick check (~1 min)
    ragloop index /work/cache/big/corpus.jsonl --out /work/cache/big/index --index-type Flat --chunk-words 100
    ragloop eval-retrieval /work/cache/big/index --data /work/cache/big/questions.jsonl --mode dense

What it writes under --out:

- corpus.jsonl: one document a line, {"id", "title", "text", "origin"} (`ragloop index` reads id, title
  and text; origin is "phantomwiki" or "squad"). The id is ragloop's content id of the text
  (`ragloop.data.records.content_id`), the same id ragloop gives a QA row's context, so a question's
  gold paragraph is found by `ragloop eval-retrieval` (gold@k) with no extra mapping.
  * the needles: the paragraphs of the bundled SQuAD v1.1 dev sample (32 articles, 1,379 paragraphs,
    real Wikipedia text, CC BY-SA 4.0), all of them unless --squad-paragraphs says fewer (at most
    half the corpus), spread evenly through the file (so its first rows are a smaller corpus of the
    same mix);
  * the haystack: PhantomWiki articles (fictional people: family, friends, date of birth, job, hobby;
    under 125 words, so one passage each at ragloop's default 100-word chunking), filling the corpus up to
    --passages documents. PhantomWiki (https://github.com/kilian-group/phantom-wiki, MIT) is run
    offline with a fixed seed: the same arguments give byte-identical files.
- questions.jsonl: every question with a gold paragraph in the corpus and its answers in it, in the
  SQuAD-like form `ragloop eval-retrieval --data` reads: {"id", "question", "answers", "title",
  "context", "gold_doc_id", "origin"} (PhantomWiki rows add "kind"). context is the gold document's
  text; gold_doc_id its id in corpus.jsonl.
  * SQuAD: every question of every needle paragraph (7,235 with all 1,379 paragraphs);
  * PhantomWiki: single-hop questions in PhantomWiki's phrasing ("Who is the mother of X?", "What is
    the occupation of X?", "Who is the person whose date of birth is D?"), --questions-per-kind of
    each, answered from the facts the articles state (see `phantom_questions`: PhantomWiki's own
    Prolog question answering does not finish at this size), every answer in the one gold article.
- questions-squad.jsonl, questions-phantomwiki.jsonl: the two parts of questions.jsonl.
- questions-phantomwiki-multihop.jsonl: two-hop questions ("What is the hobby of the sister of X?"):
  no single gold paragraph, so no context; "gold_titles" lists the articles on the path. hit@k only.
- stats.json, README.md: sources, licences, counts, words per document, the command.

PhantomWiki needs Python >= 3.12 by its metadata but runs on 3.11 with SWI-Prolog and pyswip:

    apt-get install -y swi-prolog-nox
    python -m venv --system-site-packages /tmp/pwenv
    /tmp/pwenv/bin/pip install --no-deps --ignore-requires-python phantom-wiki==1.0.3
    /tmp/pwenv/bin/pip install pyswip nltk pydot tabulate termcolor

and this script runs it as a subprocess of --phantom-python (default: $PHANTOM_PYTHON or
/tmp/pwenv/bin/python) for its articles. Its raw output is kept in OUT/phantomwiki-raw/ and reused
when the generation arguments are the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ragloop.data.bundled import SQUAD_DEV, bundled_path
from ragloop.data.records import content_id
from ragloop.evaluation.metrics import has_answer

ROOT = Path(__file__).resolve().parents[2]

PHANTOM_VERSION = "1.0.3"
TREE_SIZE = 25  # PhantomWiki's --max-family-tree-size; trees come out at ~25.3 people on average
PEOPLE_PER_TREE = 24  # what we plan with, so the generation never falls short
FACT = re.compile(r'^(\w+)\("(.*)", "(.*)"\)\.$')  # one of an article's facts: job("Aida Wang", "actor").
RELATIONS = ("mother", "father", "son", "daughter", "brother", "sister", "husband", "wife", "friend")
ATTRIBUTES = {"dob": "date of birth", "job": "occupation", "hobby": "hobby"}


def squad_needles(limit: int) -> tuple[list[dict], list[dict]]:
    """`limit` paragraphs of the bundled SQuAD dev sample (spread evenly over it, in order) as corpus
    documents, and all their questions with the paragraph as context."""
    data = json.loads(bundled_path(SQUAD_DEV).read_text(encoding="utf-8"))["data"]
    paragraphs = [(a["title"].replace("_", " "), p) for a in data for p in a["paragraphs"]]
    if limit < len(paragraphs):
        step = len(paragraphs) / limit
        paragraphs = [paragraphs[int(i * step)] for i in range(limit)]
    docs, questions = [], []
    for title, para in paragraphs:
        context = para["context"]
        doc_id = content_id(context)
        docs.append({"id": doc_id, "title": title, "text": context, "origin": "squad"})
        for qa in para["qas"]:
            answers = list(dict.fromkeys(a["text"] for a in qa["answers"]))
            questions.append({"id": qa["id"], "question": qa["question"].strip(), "answers": answers,
                              "title": title, "context": context, "gold_doc_id": doc_id, "origin": "squad"})
    return docs, questions


def generate_phantomwiki(raw: Path, people: int, seed: int, python: str) -> dict:
    """Run PhantomWiki for its articles (unless raw/ already holds a run with the same arguments); returns
    its arguments. No questions: its Prolog question answering does not scale to this size (one query
    of its first template ran for over 9 minutes on a 104k-person universe on 2 shared cores, with
    360 of its 400 still to come),
    so the questions are drawn from the articles' facts here (`phantom_questions`). The articles do not
    depend on --num-questions-per-type (checked at 68 trees: 0 and 50 write byte-identical
    articles.json)."""
    trees = math.ceil(people / PEOPLE_PER_TREE)
    args = ["--num-family-trees", str(trees), "--max-family-tree-size", str(TREE_SIZE), "--seed", str(seed),
            "--num-questions-per-type", "0", "--article-format", "json", "--question-format", "json"]
    params = {"phantom_wiki": PHANTOM_VERSION, "args": args}
    stamp = raw / "make_corpus-params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params and (raw / "articles.json").exists():
        print(f"PhantomWiki: reusing {raw} ({' '.join(args)})", flush=True)
        return params
    version = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('phantom-wiki'))"],
                             capture_output=True, text=True)
    if version.returncode != 0 or version.stdout.strip() != PHANTOM_VERSION:
        sys.exit(f"{python}: phantom-wiki {PHANTOM_VERSION} is not importable there "
                 f"({(version.stderr or version.stdout).strip()[-300:]}); see this script's docstring")
    stamp.unlink(missing_ok=True)
    raw.mkdir(parents=True, exist_ok=True)
    print(f"PhantomWiki: generating {trees} family trees into {raw} ...", flush=True)
    t0 = time.perf_counter()
    with (raw / "generate.log").open("w") as log:
        done = subprocess.run([python, "-m", "phantom_wiki", *args, "--output-dir", str(raw), "--quiet"],
                              stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"PhantomWiki failed (exit {done.returncode}): see {raw / 'generate.log'}")
    print(f"PhantomWiki: done in {time.perf_counter() - t0:.0f} s", flush=True)
    stamp.write_text(json.dumps(params) + "\n")
    return params


def article_text(markdown: str) -> str:
    """PhantomWiki's Markdown article as plain sentences: no '# Name' / '## Family' headings."""
    lines = (line.strip() for line in markdown.splitlines())
    return " ".join(line for line in lines if line and not line.startswith("#"))


def person_facts(article: dict) -> dict[str, list[str]]:
    """{"mother": ["Shelli Beltran"], "friend": [...], "dob": ["0295-05-30"], ...} from an article's facts."""
    facts: dict[str, list[str]] = {}
    for fact in article["facts"]:
        m = FACT.match(fact)
        if m is None:
            raise ValueError(f"{article['title']}: a fact not of the form rel(\"a\", \"b\").: {fact!r}")
        facts.setdefault(m.group(1), []).append(m.group(3))
    return facts


class PhantomQuestions:
    """Question makers over PhantomWiki people sharing one seeded RNG (see `phantom_questions`). Each maker
    takes (name, facts) and gives (question, answers, gold title or titles), or None to skip the person."""

    def __init__(self, articles: list[dict], seed: int) -> None:
        self.facts = {a["title"]: person_facts(a) for a in articles}
        self.names = [a["title"] for a in articles]
        self.dob_people: dict[str, list[str]] = {}
        for name in self.names:
            for dob in self.facts[name].get("dob", []):
                self.dob_people.setdefault(dob, []).append(name)
        self.rng = random.Random(seed)

    def relation(self, name: str, f: dict):
        rels = [r for r in RELATIONS if r in f]
        if not rels:
            return None
        r = self.rng.choice(rels)
        return f"Who is the {r} of {name}?", sorted(f[r]), name

    def attribute(self, name: str, f: dict):
        a = self.rng.choice(sorted(ATTRIBUTES))
        return f"What is the {ATTRIBUTES[a]} of {name}?", f.get(a, []), name

    def person(self, name: str, f: dict):
        dob = f.get("dob", [""])[0]
        if self.dob_people.get(dob) != [name]:
            return None
        return f"Who is the person whose date of birth is {dob}?", [name], name

    def attribute_of_relation(self, name: str, f: dict):
        rels = [r for r in RELATIONS if r in f]
        if not rels:
            return None
        r, a = self.rng.choice(rels), self.rng.choice(sorted(ATTRIBUTES))
        if not all(b in self.facts for b in f[r]):  # someone on the path is outside the corpus
            return None
        answers = sorted({v for b in f[r] for v in self.facts[b].get(a, [])})
        return f"What is the {ATTRIBUTES[a]} of the {r} of {name}?", answers, [name, *sorted(f[r])]


def phantom_questions(articles: list[dict], by_title: dict[str, dict], per_kind: int, seed: int,
                      max_answers: int) -> tuple[list[dict], list[dict]]:
    """Questions over the corpus's PhantomWiki people, in PhantomWiki's own phrasing, answered from the
    facts its articles state: (single-hop, each with the one article that holds every answer; multi-hop,
    with the articles on the path). `per_kind` of each kind, people drawn with a seeded RNG:

    - relation: "Who is the mother of X?" (every answer is named in X's article)
    - attribute: "What is the occupation of X?" (date of birth, occupation or hobby; X's article)
    - person: "Who is the person whose date of birth is D?" (a date only one person in the corpus has;
      that person's article)
    - attribute_of_relation: "What is the hobby of the sister of X?" (two hops: X's article, then each
      sister's; multi-hop, every sister in the corpus)
    """
    maker = PhantomQuestions(articles, seed)
    single: list[dict] = []
    multi: list[dict] = []
    seen: set[str] = set()
    for kind in ("relation", "attribute", "person", "attribute_of_relation"):
        made = 0
        for name in maker.rng.sample(maker.names, len(maker.names)):
            if made == per_kind:
                break
            got = getattr(maker, kind)(name, maker.facts[name])
            if got is None or got[0] in seen or not 0 < len(got[1]) <= max_answers:
                continue
            question, answers, gold = got
            seen.add(question)
            row = {"id": f"pw-{kind}-{made:04d}", "question": question, "answers": answers, "kind": kind}
            if isinstance(gold, str):  # one gold article
                doc = by_title[gold]
                row.update(title=gold, context=doc["text"], gold_doc_id=doc["id"], origin="phantomwiki")
                single.append(row)
            else:
                multi.append({**row, "gold_titles": gold, "origin": "phantomwiki"})
            made += 1
    return single, multi


def interleave(haystack: list[dict], needles: list[dict]) -> list[dict]:
    """Needles spread evenly through the haystack, the first one a little way in."""
    total = len(haystack) + len(needles)
    slots = {int((j + 0.5) * total / len(needles)) for j in range(len(needles))} if needles else set()
    out, h, n = [], iter(haystack), iter(needles)
    for i in range(total):
        out.append(next(n) if i in slots else next(h))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> str:
    """Write rows (one JSON object a line, UTF-8, keys as given); returns the file's sha256."""
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def word_stats(docs: list[dict]) -> dict:
    words = sorted(len(d["text"].split()) for d in docs)
    if not words:
        return {}
    pick = lambda q: words[min(len(words) - 1, int(q * len(words)))]  # noqa: E731
    return {"mean": round(statistics.fmean(words), 1), "min": words[0], "p50": pick(0.5), "p90": pick(0.9),
            "p99": pick(0.99), "max": words[-1], "over_124": sum(w > 124 for w in words)}


README = """# Retrieval corpus: {total:,} documents ({pw:,} PhantomWiki articles + {sq:,} SQuAD paragraphs)

Made by `python -m bench.scripts.make_corpus` in the ragloop repository (commit {commit}):

    {command}

Deterministic: the same arguments give byte-identical files (sha256 below).

## Files

| file | rows | what |
|---|---|---|
| corpus.jsonl | {total:,} | documents `{{"id", "title", "text", "origin"}}`; `ragloop index` reads id, title, text |
| questions.jsonl | {nq:,} | SQuAD + PhantomWiki single-hop questions with their gold paragraph (context, gold_doc_id) |
| questions-squad.jsonl | {nq_sq:,} | the SQuAD part: real questions over the needle paragraphs |
| questions-phantomwiki.jsonl | {nq_pw:,} | the PhantomWiki single-hop part (answers all in the gold article) |
| questions-phantomwiki-multihop.jsonl | {nq_multi:,} | multi-hop: answers, gold_titles (people on its paths) |

Words per document (whitespace split): PhantomWiki {pw_words}; SQuAD {sq_words}.
At ragloop's default chunking (`--chunk-words 100`: a document of at most 124 words stays one
passage) every PhantomWiki article is one passage and the {sq_long} SQuAD paragraphs over 124 words
are split, so an index of this corpus holds a little more than {total:,} passages; gold@k matches by
document id, so a split paragraph is still found.

Document ids are ragloop's content id of the text (`content_id`, the sha1 of the whitespace-squeezed
text, 16 hex digits), the id ragloop gives a QA row's `context`: `ragloop eval-retrieval INDEX --data
questions.jsonl` measures hit@k (an answer string in the top k) and gold@k (the gold document in
the top k) with no mapping.

## Sources and licences

- **SQuAD v1.1 dev** (the needles): the paragraphs of the first 32 dev articles bundled with ragloop
  (`src/ragloop/_bundled/squad-v1.1-dev.articles-00-31.json`), real Wikipedia text, with their
  crowd-sourced questions and answers. Rajpurkar et al. 2016, CC BY-SA 4.0: anything redistributed
  from these rows keeps that licence and attribution.
- **PhantomWiki {pw_version}** (the haystack): https://github.com/kilian-group/phantom-wiki, MIT
  licence (code and generated datasets); it builds on Patrick Hohenecker's family-tree generator
  (BSD-2-Clause), hobbies from a CC0 list and job titles from the faker library (MIT). Fictional
  people with family trees, friendships, date of birth, occupation and hobby, written as templated
  English sentences ("The mother of Aida Wang is Shelli Beltran."). Generated offline for its
  articles only: `{pw_args}`; the corpus holds the first {pw:,} articles in the order PhantomWiki
  writes them. Its questions are drawn by make_corpus.py from the facts those articles state, in
  PhantomWiki's phrasing ({per_kind} per kind, seed {seed}): PhantomWiki's own Prolog question
  answering did not finish at this size on 2 cores (one query ran for over 9 minutes).

The haystack is synthetic text of one kind (templated biographies), not prose: a SQuAD question
competes with {pw:,} articles about other things, so its needle is easier to find than it would be
among {pw:,} Wikipedia paragraphs. A PhantomWiki question competes with articles that all read alike,
and every name also appears in its relatives' and friends' articles.

## sha256

{sha}
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.scripts.make_corpus", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=100_000, help="documents in corpus.jsonl (default 100000)")
    ap.add_argument("--out", type=Path, required=True, help="folder to write")
    ap.add_argument("--squad-paragraphs", type=int, default=1379,
                    help="SQuAD dev paragraphs mixed in as needles (default all 1379; at most half the corpus)")
    ap.add_argument("--seed", type=int, default=1, help="PhantomWiki's seed (default 1)")
    ap.add_argument("--questions-per-kind", type=int, default=250,
                    help="PhantomWiki questions of each of the four kinds (default 250)")
    ap.add_argument("--max-answers", type=int, default=10, help="no PhantomWiki question with more answers")
    ap.add_argument("--phantom-python", default=os.environ.get("PHANTOM_PYTHON", "/tmp/pwenv/bin/python"),
                    help="a Python with phantom-wiki 1.0.3 (default $PHANTOM_PYTHON or /tmp/pwenv/bin/python)")
    args = ap.parse_args(argv)
    if args.passages < 2:
        ap.error("--passages must be at least 2")
    return args


def build(args: argparse.Namespace, out: Path) -> dict:
    """The corpus and its questions, checked: what `ragloop index` and `ragloop eval-retrieval` rely on."""
    needles, squad_questions = squad_needles(max(1, min(args.squad_paragraphs, args.passages // 2)))
    people = args.passages - len(needles)
    raw = out / "phantomwiki-raw"
    params = generate_phantomwiki(raw, people, args.seed, args.phantom_python)
    articles = json.loads((raw / "articles.json").read_text(encoding="utf-8"))
    if len(articles) < people:
        sys.exit(f"PhantomWiki wrote {len(articles)} articles, {people} needed")
    haystack = []
    for a in articles[:people]:
        text = article_text(a["article"])
        haystack.append({"id": content_id(text), "title": a["title"], "text": text, "origin": "phantomwiki"})
    corpus = interleave(haystack, needles)
    ids = [d["id"] for d in corpus]
    if len(set(ids)) != len(ids):
        sys.exit("two documents share an id (identical text): refusing to write a corpus ragloop would dedupe")
    by_title = {d["title"]: d for d in haystack}
    pw_single, pw_multi = phantom_questions(articles[:people], by_title, args.questions_per_kind, args.seed,
                                            args.max_answers)
    questions = squad_questions + pw_single
    in_corpus = set(ids)
    for q in questions:  # what `ragloop eval-retrieval` relies on
        assert q["gold_doc_id"] in in_corpus and q["gold_doc_id"] == content_id(q["context"]), q["id"]
    pw_missing = [q["id"] for q in pw_single if not has_answer(q["answers"], q["context"])]
    assert not pw_missing, pw_missing[:5]
    return {"corpus": corpus, "haystack": haystack, "needles": needles, "params": params, "questions": questions,
            "squad_questions": squad_questions, "pw_single": pw_single, "pw_multi": pw_multi}


def describe(args: argparse.Namespace, out: Path, b: dict, sha: dict, command: str, seconds: float) -> dict:
    """stats.json and README.md beside the data; the stats."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "?"
    except OSError:
        commit = "?"
    corpus, haystack, needles = b["corpus"], b["haystack"], b["needles"]
    # a few SQuAD answers are not whole-token spans of their paragraph after normalisation ("1970s" in
    # "1970s-era"): ragloop eval-retrieval counts them as answers_not_in_context; kept, as everywhere else
    squad_missing = sum(not has_answer(q["answers"], q["context"]) for q in b["squad_questions"])
    stats = {
        "documents": len(corpus), "phantomwiki_articles": len(haystack), "squad_paragraphs": len(needles),
        "words_phantomwiki": word_stats(haystack), "words_squad": word_stats(needles),
        "questions": len(b["questions"]), "questions_squad": len(b["squad_questions"]),
        "questions_squad_answer_not_in_context": squad_missing,
        "questions_phantomwiki": len(b["pw_single"]), "questions_phantomwiki_multihop": len(b["pw_multi"]),
        "phantomwiki": b["params"], "seed": args.seed, "questions_per_kind": args.questions_per_kind,
        "command": command, "commit": commit, "sha256": sha, "seconds": round(seconds, 1),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    fmt = lambda s: ", ".join(f"{k} {v}" for k, v in s.items())  # noqa: E731
    (out / "README.md").write_text(README.format(
        total=len(corpus), pw=len(haystack), sq=len(needles), commit=commit, command=command,
        nq=len(b["questions"]), nq_sq=len(b["squad_questions"]), nq_pw=len(b["pw_single"]),
        nq_multi=len(b["pw_multi"]), pw_words=fmt(stats["words_phantomwiki"]), sq_words=fmt(stats["words_squad"]),
        sq_long=stats["words_squad"].get("over_124", 0), pw_version=PHANTOM_VERSION, per_kind=args.questions_per_kind,
        seed=args.seed, pw_args=" ".join(b["params"]["args"]),
        sha="\n".join(f"    {v}  {k}" for k, v in sha.items())))
    return stats


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    b = build(args, out)
    sha = {name: write_jsonl(out / name, rows) for name, rows in [
        ("corpus.jsonl", b["corpus"]), ("questions.jsonl", b["questions"]),
        ("questions-squad.jsonl", b["squad_questions"]), ("questions-phantomwiki.jsonl", b["pw_single"]),
        ("questions-phantomwiki-multihop.jsonl", b["pw_multi"])]}
    command = "python -m bench.scripts.make_corpus " + " ".join(sys.argv[1:] if argv is None else argv)
    stats = describe(args, out, b, sha, command, time.perf_counter() - t0)
    print(f"{out}: {len(b['corpus']):,} documents ({len(b['haystack']):,} PhantomWiki + {len(b['needles']):,} "
          f"SQuAD), {len(b['questions']):,} questions with a gold paragraph ({len(b['squad_questions']):,} SQuAD, "
          f"{len(b['pw_single']):,} PhantomWiki), {len(b['pw_multi']):,} multi-hop; {stats['seconds']:.0f} s")


if __name__ == "__main__":
    main()
