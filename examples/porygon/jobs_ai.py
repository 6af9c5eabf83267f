"""`generate-ai-response`: answer a prompt from the summaries stored for its context.

The "model" is local and extractive: it ranks the sentences of the context's summaries by
TF-IDF cosine similarity to the prompt and answers with the best few, citing their files.
No network, no canned text: the answer changes with the prompt and with what was uploaded.
"""

import math
import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from examples.porygon.documents import STOP_WORDS, Summary, split_sentences
from examples.porygon.jobs_common import Slug, context_dir, output_dir, write_json_atomic
from stride import Context, RetryAfterError

ANSWER_SENTENCES = 3
CONTEXT_WAIT_SECONDS = 1.0
"""How long to wait for a context's uploads to be summarised before looking again."""
_WORD = re.compile(r"[a-z][a-z0-9]*(?:['-][a-z0-9]+)*")


class GenerationRequested(BaseModel):
    """A user asked a question about a context (`ai/generation.requested`)."""

    prompt: str = Field(min_length=1, max_length=2000)
    context_id: Slug
    requested_by_id: str


class ContextDocuments(BaseModel):
    """The summaries a context holds: the only knowledge the answer may draw on."""

    context_id: str
    summaries: list[Summary]


class Passage(BaseModel):
    """One candidate sentence and the file it came from."""

    file_id: str
    text: str


class Answer(BaseModel):
    """The generated answer with the passages it quotes and how well each matched."""

    answer: str
    sources: list[str]
    scores: list[float]


def gather_context(context_id: str) -> ContextDocuments:
    """Read the context's stored summaries; none yet means its uploads are still in flight."""
    paths = sorted(context_dir(context_id).glob("*.summary.json"))
    if not paths:
        raise RetryAfterError(f"context {context_id!r} has no summaries yet",
                              delay=CONTEXT_WAIT_SECONDS)
    summaries = [Summary.model_validate_json(path.read_text(encoding="utf-8")) for path in paths]
    return ContextDocuments(context_id=context_id, summaries=summaries)


def terms(text: str) -> list[str]:
    """Content words, lower-cased, with a naive plural fold so 'documents' meets 'document'."""
    words = (w.removesuffix("'s") for w in _WORD.findall(text.lower()))
    return [_singular(w) for w in words if len(w) > 2 and w not in STOP_WORDS]


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def passages(documents: ContextDocuments) -> list[Passage]:
    """Every distinct sentence of every summary and key point, tagged with its file."""
    seen: set[str] = set()
    found: list[Passage] = []
    for summary in documents.summaries:
        for text in [*split_sentences(summary.summary), *summary.key_points]:
            if text not in seen:
                seen.add(text)
                found.append(Passage(file_id=summary.file_id, text=text))
    return found


def rank(prompt: str, candidates: list[Passage]) -> list[tuple[float, Passage]]:
    """Candidates by TF-IDF cosine similarity to the prompt, best first, ties by position."""
    bags = [Counter(terms(p.text)) for p in candidates]
    document_frequency = Counter(term for bag in bags for term in bag)
    total = len(bags)

    def vector(bag: Counter[str]) -> dict[str, float]:
        return {t: n * math.log((1 + total) / (1 + document_frequency[t])) + n
                for t, n in bag.items()}

    query = vector(Counter(terms(prompt)))
    scored = [(_cosine(query, vector(bag)), i) for i, bag in enumerate(bags)]
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    return [(round(score, 4), candidates[i]) for score, i in scored if score > 0]


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    dot = sum(weight * b.get(term, 0.0) for term, weight in a.items())
    norm = math.sqrt(sum(w * w for w in a.values())) * math.sqrt(sum(w * w for w in b.values()))
    return dot / norm if norm else 0.0


def generate_answer(prompt: str, documents: ContextDocuments) -> Answer:
    """Answer with the best-matching sentences, or say plainly that nothing matched."""
    best = rank(prompt, passages(documents))[:ANSWER_SENTENCES]
    if not best:
        return Answer(answer=f"Nothing in {documents.context_id} mentions that.", sources=[],
                      scores=[])
    return Answer(answer=" ".join(p.text for _, p in best),
                  sources=list(dict.fromkeys(p.file_id for _, p in best)),
                  scores=[score for score, _ in best])


def store_answer(run_id: str, request: GenerationRequested, answer: Answer) -> str:
    """Keep the answer next to the other results, one file per run."""
    record = {"run_id": run_id, **request.model_dump(), **answer.model_dump()}
    return str(write_json_atomic(output_dir() / "answers" / f"{run_id}.json", record))


async def generate_ai_response(ctx: Context[GenerationRequested]) -> dict[str, Any]:
    """Gather the context, generate an answer, store it."""
    request = ctx.event.data
    documents = await ctx.step.run("gather-context", gather_context, request.context_id)
    answer = await ctx.step.run("generate-answer", generate_answer, request.prompt, documents)
    path = await ctx.step.run("store-answer", store_answer, ctx.run_id, request, answer)
    return {"answer": answer.answer, "sources": answer.sources, "path": path}
