"""The Porygon example's document pipeline: store lookup, parsing, summarising, storing.

These tests double as documentation for what each step promises the jobs built on it.
"""

import hashlib
import json
from pathlib import Path

import pytest

from examples.porygon.documents import (
    DOCUMENTS_DIR,
    KEY_POINT_MAX_CHARS,
    KEYWORD_COUNT,
    STOP_WORDS,
    FileRecord,
    ParsedDocument,
    Summary,
    get_file_by_id,
    list_file_ids,
    parse_document,
    split_sentences,
    store_summary,
    summarise,
)

BROKEN_DOCUMENTS = {"empty", "corrupt"}
REAL_DOCUMENTS = [file_id for file_id in list_file_ids() if file_id not in BROKEN_DOCUMENTS]


def squash(text: str) -> str:
    """Collapse runs of whitespace, so wrapped lines compare equal to joined sentences."""
    return " ".join(text.split())


def parsed(file_id: str) -> ParsedDocument:
    return parse_document(get_file_by_id(file_id))


# --- the sample document set ------------------------------------------------------------


def test_the_store_ships_eight_to_twelve_real_documents_plus_two_broken_ones() -> None:
    assert 8 <= len(REAL_DOCUMENTS) <= 12
    assert BROKEN_DOCUMENTS.issubset(list_file_ids())


@pytest.mark.parametrize("file_id", REAL_DOCUMENTS)
def test_each_real_document_is_utf8_text_of_400_to_2000_words(file_id: str) -> None:
    path = DOCUMENTS_DIR / f"{file_id}.txt"
    assert 400 <= len(path.read_text(encoding="utf-8").split()) <= 2000


def test_the_broken_documents_are_really_broken() -> None:
    assert (DOCUMENTS_DIR / "empty.txt").read_bytes() == b""
    garbage = (DOCUMENTS_DIR / "corrupt.bin").read_bytes()
    assert 0 < len(garbage) < 1024
    with pytest.raises(UnicodeDecodeError):
        garbage.decode("utf-8")


# --- looking files up -------------------------------------------------------------------


def test_a_file_record_fingerprints_the_bytes_on_disk() -> None:
    record = get_file_by_id("incident-postmortem")
    data = (DOCUMENTS_DIR / "incident-postmortem.txt").read_bytes()

    assert record == FileRecord(
        file_id="incident-postmortem",
        filename="incident-postmortem.txt",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        context_id="ctx-engineering",
    )


def test_files_nobody_has_filed_land_in_the_inbox_context() -> None:
    assert get_file_by_id("corrupt").context_id == "ctx-inbox"


@pytest.mark.parametrize("file_id", ["no-such-document", "", "../documents/empty", "EMPTY"])
def test_an_unknown_id_raises_file_not_found_naming_the_id(file_id: str) -> None:
    with pytest.raises(FileNotFoundError, match="no document with id"):
        get_file_by_id(file_id)


def test_the_store_can_point_at_another_directory(tmp_path: Path) -> None:
    (tmp_path / "memo.txt").write_text("Memo\n\nThe office is closed on Friday afternoon.\n")

    record = get_file_by_id("memo", directory=tmp_path)

    assert list_file_ids(tmp_path) == ["memo"]
    assert parse_document(record, directory=tmp_path).title == "Memo"


# --- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize("file_id", REAL_DOCUMENTS)
def test_parsing_takes_the_title_from_the_first_line_and_keeps_every_sentence(
    file_id: str,
) -> None:
    doc = parsed(file_id)
    text = (DOCUMENTS_DIR / f"{file_id}.txt").read_text(encoding="utf-8")

    assert doc.file_id == file_id
    assert doc.title == text.splitlines()[0]
    assert doc.text == text
    assert doc.word_count == len(text.split())
    assert len(doc.sentences) >= 10
    assert all(squash(sentence) in squash(text) for sentence in doc.sentences)


def test_an_empty_file_is_rejected_by_name() -> None:
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        parsed("empty")


def test_a_binary_file_is_rejected_by_name_instead_of_being_summarised_as_garbage() -> None:
    with pytest.raises(ValueError, match=r"corrupt\.bin is not UTF-8 text") as caught:
        parsed("corrupt")
    assert isinstance(caught.value.__cause__, UnicodeDecodeError)


def test_a_whitespace_only_file_counts_as_empty(tmp_path: Path) -> None:
    (tmp_path / "blank.txt").write_text("  \n\n\t\n")
    with pytest.raises(ValueError, match=r"blank\.txt is empty"):
        parse_document(get_file_by_id("blank", tmp_path), directory=tmp_path)


def test_the_splitter_is_not_fooled_by_abbreviations_decimals_or_initials() -> None:
    text = (
        "Dr. Okafor measured 3.5 times more recall, e.g. on contracts. See Fig. 3 for details! "
        "J. Smith disagreed. Was the sample too small? Probably."
    )
    assert split_sentences(text) == [
        "Dr. Okafor measured 3.5 times more recall, e.g. on contracts.",
        "See Fig. 3 for details!",
        "J. Smith disagreed.",
        "Was the sample too small?",
        "Probably.",
    ]


def test_the_splitter_joins_wrapped_lines_and_separates_headings_and_bullets() -> None:
    text = "Heading\n\nA sentence that wraps\nonto a second line. Another one.\n- first\n- second"
    assert split_sentences(text) == [
        "Heading",
        "A sentence that wraps onto a second line.",
        "Another one.",
        "first",
        "second",
    ]


# --- summarising ------------------------------------------------------------------------


@pytest.mark.parametrize("file_id", REAL_DOCUMENTS)
def test_a_summary_is_one_to_three_sentences_quoted_verbatim_from_the_document(
    file_id: str,
) -> None:
    doc = parsed(file_id)
    summary = summarise(doc)
    sentences = split_sentences(summary.summary)

    assert summary.file_id == file_id
    assert 1 <= len(sentences) <= 3
    for sentence in sentences:
        assert sentence in doc.sentences
        assert squash(sentence) in squash(doc.text)


@pytest.mark.parametrize("file_id", REAL_DOCUMENTS)
def test_summary_sentences_keep_their_original_order(file_id: str) -> None:
    doc = parsed(file_id)
    positions = [doc.sentences.index(s) for s in split_sentences(summarise(doc).summary)]
    assert positions == sorted(positions)


@pytest.mark.parametrize("file_id", REAL_DOCUMENTS)
def test_key_points_are_short_distinct_and_taken_from_the_text(file_id: str) -> None:
    doc = parsed(file_id)
    summary = summarise(doc)

    assert 1 <= len(summary.key_points) <= 5
    assert len(set(summary.key_points)) == len(summary.key_points)
    for point in summary.key_points:
        assert len(point) <= KEY_POINT_MAX_CHARS
        assert squash(point.removesuffix("...")) in squash(doc.text)
        assert point not in summary.summary


@pytest.mark.parametrize("file_id", REAL_DOCUMENTS)
def test_keywords_are_content_words_not_stop_words(file_id: str) -> None:
    keywords = summarise(parsed(file_id)).keywords

    assert 1 <= len(keywords) <= KEYWORD_COUNT
    assert len(set(keywords)) == len(keywords)
    assert not set(keywords) & STOP_WORDS
    assert all(keyword.islower() and len(keyword) > 2 for keyword in keywords)


def test_keywords_reflect_what_the_document_is_about() -> None:
    assert "chunk" in summarise(parsed("research-summary-chunking")).keywords
    assert "job" in summarise(parsed("incident-postmortem")).keywords


@pytest.mark.parametrize("file_id", REAL_DOCUMENTS)
def test_summaries_are_deterministic(file_id: str) -> None:
    assert summarise(parsed(file_id)) == summarise(parsed(file_id))


def test_asking_for_fewer_sentences_keeps_the_best_one() -> None:
    doc = parsed("quarterly-report-q3")
    (best,) = split_sentences(summarise(doc, max_sentences=1, max_points=0).summary)
    assert best in split_sentences(summarise(doc).summary)
    assert summarise(doc, max_points=0).key_points == []


def test_nonsense_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_sentences"):
        summarise(parsed("pricing-proposal"), max_sentences=0)


def test_a_one_line_document_still_gets_a_summary(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("Remember to rotate the signing certificate.\n")
    doc = parse_document(get_file_by_id("note", tmp_path), directory=tmp_path)

    summary = summarise(doc)

    assert summary.summary == "Remember to rotate the signing certificate."
    assert summary.keywords[:2] == ["remember", "rotate"]


# --- storing ----------------------------------------------------------------------------


def test_store_summary_writes_valid_json_next_to_nothing_else(tmp_path: Path) -> None:
    summary = summarise(parsed("onboarding-guide"))

    path = store_summary(summary, tmp_path / "summaries")

    assert path == tmp_path / "summaries" / "onboarding-guide.summary.json"
    assert Summary.model_validate(json.loads(path.read_text(encoding="utf-8"))) == summary
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_storing_again_replaces_the_previous_summary(tmp_path: Path) -> None:
    old = Summary(file_id="memo", summary="Old.", key_points=[], keywords=[])
    new = Summary(file_id="memo", summary="New.", key_points=["A point."], keywords=["memo"])

    store_summary(old, tmp_path)
    path = store_summary(new, tmp_path)

    assert Summary.model_validate_json(path.read_text(encoding="utf-8")) == new


def test_store_summary_refuses_ids_that_could_escape_the_directory(tmp_path: Path) -> None:
    sneaky = Summary(file_id="../../etc/passwd", summary="x", key_points=[], keywords=[])
    with pytest.raises(ValueError, match="unsafe file id"):
        store_summary(sneaky, tmp_path)
