"""The duplicate check's keys on disk (seen.py): what was added is found, in queries of any length."""

from ragloop.data.seen import CACHE_KIB, SeenKeys


def test_added_documents_and_texts_are_found_and_others_are_not():
    with SeenKeys() as seen:
        seen.add_documents([(f"d{i}", f"k{i}", f"f:{i}") for i in range(2000)])
        seen.add_texts([f"t{i}" for i in range(0, 3000, 2)])
        asked = [f"d{i}" for i in range(1990, 2010)] * 2  # repeated ids, past the 900-parameter queries too
        assert seen.documents(asked) == {f"d{i}": (f"k{i}", f"f:{i}") for i in range(1990, 2000)}
        assert seen.texts([f"t{i}" for i in range(3000)]) == {f"t{i}" for i in range(0, 3000, 2)}
        assert seen.documents([]) == {} and seen.texts([]) == set()


def test_the_database_is_private_and_temporary_with_a_bounded_page_cache():
    with SeenKeys() as seen:
        [(_, name, file)] = seen.db.execute("PRAGMA database_list").fetchall()
        assert name == "main" and file == ""  # SQLite's private temporary kind: no named file left behind
        assert seen.db.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB
    seen.close()  # again: a no-op
