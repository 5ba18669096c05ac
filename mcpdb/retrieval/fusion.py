"""Hybrid ranking: the fusion of a lexical (BM25) and a vector (cosine) ranking into one.

Two families, both measured by ``mcpdb bench retrieval`` on the generated memory corpus (paraphrased
and direct questions, distractors sharing the paraphrase's words; RESULTS.md has the table):

- **reciprocal rank fusion** (Cormack et al. 2009; Elasticsearch's and Graphiti's default): a context
  scores ``weight / (RRF_K + rank)`` in each list it is in. It sees only ranks, so a distractor that is
  first lexically and third by meaning beats the fact that is first by meaning and absent lexically;
- **relative score fusion** (Weaviate's ``relativeScoreFusion``): each list's scores are scaled to
  0..1 between its worst and best, then summed with weights. How far ahead a context is counts, not
  only its place, so a clear lead in one list survives a middling rank in the other.

``DEFAULT`` is the one the measurement chose: relative score fusion with the vector ranking weighted
0.8. On 20 users' corpus (960 questions, half paraphrased, half direct) it found the fact in the top
five for 0.923 of them, against 0.899 for the vector ranking alone, 0.500 for BM25 alone and 0.910 for
reciprocal rank fusion, whose recall@1 fell to 0.50 (vector alone: 0.69; this fusion 0.67): each
paraphrase's distractor, first by words, won on rank alone. Lower vector weights let the distractors
through, higher ones lose the direct questions' lexical evidence. A weight tuned on one corpus is a
default, not a law: a model that embeds better earns a higher one. The vector ranking is scaled by its
spread, but by no less than 0.1 of cosine: an outside probe searched a namespace of 2,000 unrelated
memories for "peanuts", and the one memory holding the word ranked 45th, because the bundled model's
hundred nearest vectors lay within 0.02 of each other and, scaled to 0..1, that noise outweighed the
only exact match; with the floor it ranks first, and on the corpus floors of 0.05 to 0.2 change nothing
(a user's memories spread wider). Everything here is arithmetic on the scores a search
read in one transaction, in a fixed order, in Python floats (IEEE doubles): every replica at the same
version fuses to the same ranking. Equal fused scores go to the newer context (``recency``: its
version, a Raft index, the same on every replica): of two memories that match equally, the later one is
likelier to be what is true now; then id order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

# Reciprocal rank fusion's constant: a rank's weight 1 / (RRF_K + rank) keeps the top of each list from
# drowning the other.
RRF_K = 60

Ranking = Sequence[tuple[bytes, float]]  # (context id, score), best first


@dataclass(frozen=True)
class Fusion:
    """How hybrid fuses: ``method``, and the vector ranking's weight (the lexical one's is 1 minus it)."""

    method: Literal["rrf", "relative"]
    vector_weight: float = 0.5
    # relative: a vector ranking whose scores spread less than this is scaled by this instead (cosines
    # that close are the model's noise, and scaled to 0..1 they would outweigh an exact word match)
    min_spread: float = 0.0

    @property
    def name(self) -> str:
        floor = f" floor {self.min_spread:g}" if self.min_spread else ""
        return f"{self.method} {self.vector_weight:.2f}{floor}"

    def _contributions(self, ranking: Ranking, weight: float, min_spread: float) -> list[tuple[bytes, float]]:
        if self.method == "rrf":
            return [(key, weight / (RRF_K + rank)) for rank, (key, _) in enumerate(ranking, start=1)]
        if not ranking:
            return []
        best, worst = ranking[0][1], ranking[-1][1]
        spread = max(best - worst, min_spread)
        return [(key, weight * ((score - worst) / spread if spread > 0 else 1.0)) for key, score in ranking]

    def fuse(
        self, lexical: Ranking, similar: Ranking, recency: dict[bytes, int], limit: int
    ) -> list[tuple[bytes, float]]:
        """The ``limit`` best of the two rankings' contexts, fused, best first."""
        scores: dict[bytes, float] = {}
        sides = ((lexical, 1.0 - self.vector_weight, 0.0), (similar, self.vector_weight, self.min_spread))
        for ranking, weight, min_spread in sides:
            for key, share in self._contributions(ranking, weight, min_spread):
                scores[key] = scores.get(key, 0.0) + share
        ordered = sorted(scores.items(), key=lambda item: (-item[1], -recency.get(item[0], 0), item[0]))
        return ordered[:limit]


DEFAULT = Fusion("relative", 0.8, min_spread=0.1)
