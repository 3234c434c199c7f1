"""data/excerpt.py: the first documents of a corpus, in the corpus format again."""

from __future__ import annotations

from bertforge.data.corpus import iter_documents
from bertforge.data.excerpt import write_first_documents


def test_first_documents_keep_their_sentences_and_stop_at_the_limit(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("One here. Two here.\nThree.\n\n\nFour.\n\nFive.\n", encoding="utf-8")
    excerpt = tmp_path / "excerpt.txt"
    write_first_documents([corpus], excerpt, max_documents=2)
    assert excerpt.read_text(encoding="utf-8") == "One here.\nTwo here.\nThree.\n\nFour.\n"
    assert list(iter_documents([excerpt])) == [["One here.", "Two here.", "Three."], ["Four."]]
