"""bench/make_corpus.py on a fake PhantomWiki run: what it writes is what `ragloop index` and
`ragloop eval-retrieval` read, every question's gold paragraph is in the corpus, and a rerun is identical."""

import importlib.util
import json
from pathlib import Path

from ragloop import load_corpus, load_qa

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "bench" / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _person(name: str, lines: list[str]) -> dict:
    return {"title": name, "article": f"# {name}\n\n## Family\n" + "\n".join(lines) + "\n", "facts": []}


def _fake_phantomwiki(raw: Path, people: int, make_corpus) -> None:
    """What PhantomWiki writes (articles.json, questions.json) plus the stamp that says it ran with the
    arguments make_corpus would pass for `people` articles."""
    raw.mkdir(parents=True)
    names = [f"Person{chr(65 + i)} Smith" for i in range(people + 1)]  # one more than the corpus keeps
    articles = [_person(n, [f"The friend of {n} is {names[(i + 1) % len(names)]}.",
                            f"The hobby of {n} is hobby{i}."]) for i, n in enumerate(names)]
    (raw / "articles.json").write_text(json.dumps(articles))
    questions = [
        {"question": f"Who is the friend of {names[0]}?", "answer": [names[1]], "difficulty": 1, "type": 1,
         "solution_traces": json.dumps([{"Y_2": names[1]}])},
        {"question": "Who is the person whose hobby is hobby2?", "answer": [names[2]], "difficulty": 1, "type": 1,
         "solution_traces": json.dumps([{"Y_2": names[2]}])},
        {"question": "Who is the friend of the person whose hobby is hobby3?", "answer": [names[4]],
         "difficulty": 2, "type": 0, "solution_traces": json.dumps([{"Y_2": names[4], "Y_4": names[3]}])},
        {"question": f"Who is the friend of {names[-1]}?", "answer": [names[0]], "difficulty": 1, "type": 1,
         "solution_traces": "[]"},  # its person is cut off: a multi-hop-file row by names[0] only
    ]
    (raw / "questions.json").write_text(json.dumps(questions))
    trees = -(-people // make_corpus.PEOPLE_PER_TREE)
    args = ["--num-family-trees", str(trees), "--max-family-tree-size", str(make_corpus.TREE_SIZE), "--seed", "1",
            "--num-questions-per-type", "50", "--article-format", "json", "--question-format", "json"]
    stamp = {"phantom_wiki": make_corpus.PHANTOM_VERSION, "args": args}
    (raw / "make_corpus-params.json").write_text(json.dumps(stamp) + "\n")


def test_make_corpus_writes_what_ragloop_reads(tmp_path):
    make_corpus = _module()
    out = tmp_path / "corpus"
    _fake_phantomwiki(out / "phantomwiki-raw", people=7, make_corpus=make_corpus)
    make_corpus.main(["--passages", "10", "--squad-paragraphs", "3", "--out", str(out)])

    rows = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and [r["origin"] for r in rows].count("squad") == 3
    assert [r["origin"] for r in rows][:2] == ["phantomwiki", "squad"]  # needles spread through the file
    assert "#" not in rows[0]["text"] and rows[0]["text"].startswith("The friend of PersonA Smith")

    passages = load_corpus([out / "corpus.jsonl"])
    assert {p.doc_id for p in passages} == {r["id"] for r in rows}  # ragloop keeps our ids
    questions = load_qa(out / "questions.jsonl")
    assert all(q.doc_id in {r["id"] for r in rows} for q in questions)  # gold@k can find every gold paragraph
    by_id = {q.id: q for q in questions}
    assert by_id["pw-q00000"].title == "PersonA Smith"  # the person named in the question
    assert by_id["pw-q00001"].title == "PersonC Smith"  # the one answer to "whose hobby is ..."
    multihop = [json.loads(line) for line in (out / "questions-phantomwiki-multihop.jsonl").read_text().splitlines()]
    assert [q["gold_titles"] for q in multihop] == [["PersonD Smith", "PersonE Smith"], ["PersonA Smith"]]

    first = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    make_corpus.main(["--passages", "10", "--squad-paragraphs", "3", "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == first
