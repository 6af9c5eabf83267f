"""Porygon's document pipeline: a tiny file store, a strict parser and an extractive summariser.

Everything here is standard library plus pydantic, with no network and no randomness, so
the Stride example runs offline and gives the same answer every time. Each public
function is one step a durable job can run: look up a file, parse it, summarise it, store the
summary. Failures are raised as specific exceptions that name the file, because a job
that fails loudly and specifically is one the on-call engineer can actually act on.
"""

import hashlib
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

DOCUMENTS_DIR: Path = Path(__file__).resolve().parent / "documents"
"""Where the example "file store" keeps uploaded documents."""

DEFAULT_CONTEXT_ID = "ctx-inbox"
"""Context for files nobody has filed yet (including the deliberately broken ones)."""

CONTEXT_BY_FILE_ID: Mapping[str, str] = {
    "incident-postmortem": "ctx-engineering",
    "meeting-notes-planning": "ctx-engineering",
    "research-summary-chunking": "ctx-engineering",
    "security-review-uploads": "ctx-engineering",
    "product-spec-shared-contexts": "ctx-product",
    "customer-interviews": "ctx-product",
    "support-ticket-digest": "ctx-product",
    "quarterly-report-q3": "ctx-leadership",
    "pricing-proposal": "ctx-leadership",
    "onboarding-guide": "ctx-people",
}
"""Which context each sample document was uploaded into; a real store would keep this in a DB."""

KEYWORD_COUNT = 8
KEY_POINT_MAX_CHARS = 200
TITLE_MAX_CHARS = 120
POSITION_WEIGHT = 0.5
"""The first sentence scores up to 1.5x: writers tend to put the point of a document first."""
MIN_SENTENCE_WORDS = 6
MAX_SENTENCE_WORDS = 60

_STOP_WORD_TEXT = """
    a about above after again against all almost also although am among an and any are
    around as at be because been before being below between both but by can could did do
    does doing done down during each either else even ever every few for from further get
    gets got had has have having he her here hers herself him himself his how however i if
    in into is it its itself just least less let like made make makes many may me might
    more most much must my myself neither no nor not now of off often on once one only onto
    or other others our ours ourselves out over own per rather really same she should since
    so some such than that the their theirs them themselves then there these they this
    those though through thus to too under until up upon us very via was we well were what
    when where whether which while who whom whose why will with within without would yet
    you your yours yourself yourselves new next first second third two three four five six
    today still already instead another things thing way ways lot lots quite roughly
    usually simply
"""
STOP_WORDS: frozenset[str] = frozenset(_STOP_WORD_TEXT.split())
"""Words too common to say anything about what a document is about (hand-written, English)."""

_FILE_ID = re.compile(r"[a-z0-9][a-z0-9_-]*")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+")
_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*(?=\s+[\"'(\[]?[A-Z0-9])")
_INITIALS = re.compile(r"(?:[a-z]\.)*[a-z]")
_WORD = re.compile(r"[a-z][a-z0-9]*(?:['-][a-z0-9]+)*")
_CANDIDATE = re.compile(r"[\"'(]?[A-Z0-9].*[.!?][\"')\]]*", re.DOTALL)
_ABBREVIATION_TEXT = """
    mr mrs ms dr prof sr jr st vs fig figs vol approx dept inc ltd corp al cf
    jan feb mar apr jun jul aug sep sept oct nov dec
"""
_ABBREVIATIONS = frozenset(_ABBREVIATION_TEXT.split())


class FileRecord(BaseModel):
    """What the store knows about an uploaded file; small enough to be a job's input."""

    model_config = ConfigDict(frozen=True)

    file_id: str
    filename: str
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    context_id: str


class ParsedDocument(BaseModel):
    """A document's decoded text, split into sentences once so later steps need not re-parse."""

    model_config = ConfigDict(frozen=True)

    file_id: str
    title: str
    text: str
    word_count: int
    sentences: list[str]


class Summary(BaseModel):
    """The result users read as proof that Porygon actually understood their upload."""

    model_config = ConfigDict(frozen=True)

    file_id: str
    summary: str
    key_points: list[str]
    keywords: list[str]


# --- file store -------------------------------------------------------------------------


def list_file_ids(directory: Path = DOCUMENTS_DIR) -> list[str]:
    """Every file id in the store, sorted so demos and tests iterate in a stable order."""
    return sorted(p.stem for p in directory.iterdir() if p.is_file() and _FILE_ID.fullmatch(p.stem))


def get_file_by_id(file_id: str, directory: Path = DOCUMENTS_DIR) -> FileRecord:
    """Look a file up by id (its name without extension) and fingerprint its current bytes.

    The hash lets callers deduplicate uploads and notice that a file changed under them.
    """
    path = _find_file(file_id, directory)
    data = path.read_bytes()
    return FileRecord(
        file_id=file_id,
        filename=path.name,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        context_id=CONTEXT_BY_FILE_ID.get(file_id, DEFAULT_CONTEXT_ID),
    )


def _find_file(file_id: str, directory: Path) -> Path:
    # Ids are validated before touching the filesystem so "../secrets" can never escape.
    if _FILE_ID.fullmatch(file_id):
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.stem == file_id:
                return path
    raise FileNotFoundError(f"no document with id {file_id!r} in {directory}")


# --- parsing ----------------------------------------------------------------------------


def parse_document(record: FileRecord, directory: Path = DOCUMENTS_DIR) -> ParsedDocument:
    """Decode a stored file strictly and split it into a title and sentences.

    Raises ValueError naming the file when it is empty or not UTF-8: those are problems with
    the upload, not transient faults, so retrying would never help.
    """
    # Only the base name is trusted, so a hand-built record cannot point outside ``directory``.
    text = _decode(record.filename, (directory / Path(record.filename).name).read_bytes())
    if not text.strip():
        raise ValueError(f"{record.filename} is empty: there is no text to summarise")
    title, _, body = text.strip().partition("\n")
    title = _shorten(title.strip(), TITLE_MAX_CHARS)
    return ParsedDocument(
        file_id=record.file_id,
        title=title,
        text=text,
        word_count=len(text.split()),
        sentences=split_sentences(body) or [title],
    )


def _decode(filename: str, data: bytes) -> str:
    # Strict decoding: silently replacing bad bytes would summarise garbage as if it were text.
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = f"byte 0x{data[exc.start]:02x} at offset {exc.start}"
        raise ValueError(f"{filename} is not UTF-8 text ({bad})") from exc


def split_sentences(text: str) -> list[str]:
    """Split plain text into sentences; each paragraph, heading or bullet item starts afresh.

    Lines inside a paragraph are joined with single spaces, so hard-wrapped text works too.
    """
    return [sentence for block in _blocks(text) for sentence in _split_block(block)]


def _blocks(text: str) -> list[str]:
    # A blank line ends a paragraph; a bullet marker starts a new item even without one.
    blocks: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        current: list[str] = []
        for line in paragraph.splitlines():
            if _BULLET.match(line) and current:
                blocks.append(" ".join(current))
                current = []
            if line.strip():
                current.append(_BULLET.sub("", line).strip())
        if current:
            blocks.append(" ".join(current))
    return blocks


def _split_block(block: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(block):
        single_period = match.group().rstrip("\"')]") == "."
        if single_period and _is_abbreviation(block[start : match.start()]):
            continue
        sentences.append(block[start : match.end()].strip())
        start = match.end()
    sentences.append(block[start:].strip())
    return [sentence for sentence in sentences if sentence]


def _is_abbreviation(before_period: str) -> bool:
    # "Dr. Okafor", "Fig. 3", "e.g. Slack" and initials like "J. Smith" do not end a sentence.
    words = before_period.split()
    if not words:
        return False
    token = words[-1].lstrip("\"'([").lower()
    return token in _ABBREVIATIONS or _INITIALS.fullmatch(token) is not None


# --- summarising ------------------------------------------------------------------------


def summarise(doc: ParsedDocument, max_sentences: int = 3, max_points: int = 5) -> Summary:
    """Pick the document's most representative sentences (extractive, so nothing is invented).

    Words score by normalised frequency; sentences by their summed word scores over
    sqrt(length), with a bonus for appearing early. Ties go to the earlier sentence, so the
    output is fully deterministic.
    """
    if max_sentences < 1 or max_points < 0:
        raise ValueError("need max_sentences >= 1 and max_points >= 0")
    candidates = _candidates(doc.sentences)
    scores = _word_scores([doc.title, *candidates])
    ranked = sorted(
        range(len(candidates)),
        key=lambda i: (-_sentence_score(candidates[i], i, len(candidates), scores), i),
    )
    chosen = sorted(ranked[:max_sentences])
    points = sorted(ranked[max_sentences : max_sentences + max_points])
    return Summary(
        file_id=doc.file_id,
        summary=" ".join(candidates[i] for i in chosen),
        key_points=[_shorten(candidates[i], KEY_POINT_MAX_CHARS) for i in points],
        keywords=_keywords([doc.title, *candidates]),
    )


def _candidates(sentences: list[str]) -> list[str]:
    # Headings, labels and fragments make poor summaries; keep complete prose sentences,
    # dropping exact repeats so key points stay distinct. Fall back to everything if none fit.
    seen: set[str] = set()
    kept: list[str] = []
    for sentence in sentences:
        key = " ".join(sentence.lower().split())
        if _is_prose(sentence) and key not in seen:
            seen.add(key)
            kept.append(sentence)
    return kept or list(dict.fromkeys(sentences))


def _is_prose(sentence: str) -> bool:
    # "Attendees: ...", "Scope: ..." and "Owner: ..." lines are metadata, not prose.
    words = sentence.split()
    is_sized = MIN_SENTENCE_WORDS <= len(words) <= MAX_SENTENCE_WORDS
    return is_sized and not words[0].endswith(":") and _CANDIDATE.fullmatch(sentence) is not None


def _terms(text: str) -> list[str]:
    """Content words of ``text``: lower-cased, possessives dropped, stop words removed."""
    words = (word.removesuffix("'s") for word in _WORD.findall(text.lower()))
    return [word for word in words if len(word) > 2 and word not in STOP_WORDS]


def _term_counts(texts: list[str]) -> Counter[str]:
    # Fold "documents" into "document" when both occur, so one idea is not counted twice.
    # Counter keeps first-seen order, which later breaks frequency ties by position.
    counts = Counter(term for text in texts for term in _terms(text))
    for term in list(counts):
        singular = term[:-1]
        if term.endswith("s") and not term.endswith("ss") and singular in counts:
            counts[singular] += counts.pop(term)
    return counts


def _word_scores(texts: list[str]) -> dict[str, float]:
    counts = _term_counts(texts)
    top = max(counts.values(), default=1)
    return {term: count / top for term, count in counts.items()}


def _sentence_score(sentence: str, index: int, total: int, scores: dict[str, float]) -> float:
    # Length-normalised by the square root of the word count: a plain average overrates terse
    # fragments, a plain sum overrates long rambles. A term missing from ``scores`` is a
    # plural that _term_counts folded into its singular.
    weight = sum(scores.get(term, scores.get(term[:-1], 0.0)) for term in _terms(sentence))
    density = weight / math.sqrt(max(len(sentence.split()), 1))
    return density * (1 + POSITION_WEIGHT * (1 - index / max(total, 1)))


def _keywords(texts: list[str]) -> list[str]:
    return [term for term, _ in _term_counts(texts).most_common(KEYWORD_COUNT)]


def _shorten(text: str, limit: int) -> str:
    """Trim ``text`` to at most ``limit`` characters, cutting at a word boundary."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:-") + "..."


# --- storage ----------------------------------------------------------------------------


def store_summary(summary: Summary, directory: Path) -> Path:
    """Write ``<file_id>.summary.json`` atomically and return its path.

    Readers see either the old summary or the new one, never a half-written file, even if the
    worker is killed mid-write; rewriting the same summary on a retry is harmless.
    """
    if not _FILE_ID.fullmatch(summary.file_id):
        raise ValueError(f"unsafe file id for a summary path: {summary.file_id!r}")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{summary.file_id}.summary.json"
    _atomic_write(target, summary.model_dump_json(indent=2) + "\n")
    return target


def _atomic_write(target: Path, content: str) -> None:
    # Temp file in the same directory so os.replace is a same-filesystem atomic rename.
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
