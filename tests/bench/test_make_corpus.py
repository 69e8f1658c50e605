"""bench/scripts/make_corpus.py on a fake PhantomWiki run: what it writes is what `ragloop index` and
`ragloop eval-retrieval` read, every question's gold paragraph is in the corpus and holds its answers,
and a rerun is identical."""

import json
from pathlib import Path

from ragloop import load_corpus, load_qa


def _module():
    from bench.scripts import make_corpus

    return make_corpus


def _person(i: int, names: list[str]) -> dict:
    """A PhantomWiki article as articles.json holds it: Markdown plus the facts it states."""
    name, friend, mother = names[i], names[(i + 1) % len(names)], names[(i + 2) % len(names)]
    facts = [f'mother("{name}", "{mother}").', f'friend("{name}", "{friend}").',
             f'dob("{name}", "0{200 + i}-01-0{1 + i % 9}").', f'job("{name}", "job{i}").',
             f'hobby("{name}", "hobby{i}").', f'gender("{name}", "female").']
    lines = [f"The mother of {name} is {mother}.", "", "## Friends", f"The friend of {name} is {friend}.", "",
             "## Attributes", f"The date of birth of {name} is 0{200 + i}-01-0{1 + i % 9}.",
             f"The occupation of {name} is job{i}.", f"The hobby of {name} is hobby{i}.",
             f"The gender of {name} is female."]
    return {"title": name, "article": f"# {name}\n\n## Family\n" + "\n".join(lines) + "\n", "facts": facts}


def _fake_phantomwiki(raw: Path, people: int, make_corpus) -> None:
    """What PhantomWiki writes (articles.json, an empty questions.json) plus the stamp that says it ran
    with the arguments make_corpus would pass for `people` articles."""
    raw.mkdir(parents=True)
    names = [f"Person{chr(65 + i)} Smith" for i in range(people + 1)]  # one more than the corpus keeps
    (raw / "articles.json").write_text(json.dumps([_person(i, names) for i in range(len(names))]))
    (raw / "questions.json").write_text("[]")
    trees = -(-people // make_corpus.PEOPLE_PER_TREE)
    args = ["--num-family-trees", str(trees), "--max-family-tree-size", str(make_corpus.TREE_SIZE), "--seed", "1",
            "--num-questions-per-type", "0", "--article-format", "json", "--question-format", "json"]
    stamp = {"phantom_wiki": make_corpus.PHANTOM_VERSION, "args": args}
    (raw / "make_corpus-params.json").write_text(json.dumps(stamp) + "\n")


def test_make_corpus_writes_what_ragloop_reads(tmp_path):
    make_corpus = _module()
    out = tmp_path / "corpus"
    _fake_phantomwiki(out / "phantomwiki-raw", people=7, make_corpus=make_corpus)
    argv = ["--passages", "10", "--squad-paragraphs", "3", "--questions-per-kind", "2", "--out", str(out)]
    make_corpus.main(argv)

    rows = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and [r["origin"] for r in rows].count("squad") == 3
    assert [r["origin"] for r in rows][:2] == ["phantomwiki", "squad"]  # needles spread through the file
    assert "#" not in rows[0]["text"] and rows[0]["text"].startswith("The mother of PersonA Smith is PersonC")
    by_title = {r["title"]: r["text"] for r in rows}

    passages = load_corpus([out / "corpus.jsonl"])
    assert {p.doc_id for p in passages} == {r["id"] for r in rows}  # ragloop keeps our ids
    questions = load_qa(out / "questions.jsonl")
    assert all(q.doc_id in {r["id"] for r in rows} for q in questions)  # gold@k can find every gold paragraph
    pw = [q for q in questions if q.id.startswith("pw-")]
    kinds = {q.id.rsplit("-", 1)[0] for q in pw}
    assert kinds == {"pw-relation", "pw-attribute", "pw-person"} and len(pw) == 3 * 2  # --questions-per-kind 2
    for q in pw:  # every answer is in the gold article, which is the person the question names or answers
        assert all(a in q.context for a in q.answers)
        assert q.title in q.question or q.answers == [q.title]
    multihop = [json.loads(line) for line in (out / "questions-phantomwiki-multihop.jsonl").read_text().splitlines()]
    titles = {r["title"] for r in rows}
    assert multihop and all(set(q["gold_titles"]) <= titles for q in multihop)  # PersonH (cut off) on no path
    for q in multihop:
        first, *second = q["gold_titles"]
        assert first in q["question"] and all(any(a in by_title[t] for t in second) for a in q["answers"])

    first = {p.name: p.read_bytes() for p in out.glob("*.jsonl")}
    make_corpus.main(argv)
    assert {p.name: p.read_bytes() for p in out.glob("*.jsonl")} == first
