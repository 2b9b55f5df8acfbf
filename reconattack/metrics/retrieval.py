"""Image retrieval leakage: is each reconstruction nearest to its own original?

The question a privacy researcher asks before any pixel similarity: could someone holding the
originals tell *which* image a reconstruction came from? For every row that has images (the
attack, each control, each stored row) the reconstructions are queries against the gallery of
the N held-out originals of the same evaluation; a query scores when its own original is the
nearest by cosine similarity of a named embedding (breaching's *image identifiability
precision*; rank-1 retrieval).

- **Ties are shared.** A query whose own original is among k equally near originals scores 1/k.
  So a constant image (the mean-image control) scores exactly chance, 1/N: whichever originals
  are nearest to it, they share one hit among them.
- **The embedding is named.** ``clip``: the metric suite's CLIP image tower (missing with its
  reason when its weights are not there, never a random network); ``hog``: histograms of
  oriented gradients (:class:`~reconattack.metrics.embeddings.HOGEmbedding`), which need no
  download. Keys: ``retrieval/<embedding>/rank1``, ``.../chance`` (1/N), ``.../n`` (N).
- **One gallery item per original.** Under DDP a sampler pads its last batch with repeats; an
  original whose embedding equals another's exactly is one gallery item (a repeat would
  otherwise tie with itself), and N counts the distinct originals.

Memory: one float16 embedding per image and side (512 numbers for CLIP ViT-B-32, 324 for the
configured HOG: about 1 KB and 0.6 KB), never the images; the similarity matrix is computed in
blocks of queries. Embeddings are normalised and compared in float64 from the float16 values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reconattack.metrics.states import MISSING_PREFIX, Collect, compute_state

#: the embeddings retrieval can use (``metrics.retrieval.embeddings``)
EMBEDDINGS = ("clip", "hog")
#: queries per block of the similarity matrix (memory: block × N floats)
BLOCK = 1024


def retrieval_rank1(queries: Tensor, gallery: Tensor, own: Tensor | None = None) -> Tensor:
    """Per-query rank-1 retrieval score with shared ties.

    Args:
        queries: (Q, D) embeddings of the reconstructions (any scale: cosine similarity).
        gallery: (N, D) embeddings of the originals.
        own: (Q,) int index into ``gallery`` of each query's own original; default
            ``arange(Q)`` (then Q must equal N).

    Returns:
        (Q,) float64 in [0, 1]: 1 / k when no original is strictly nearer to the query than its
        own and k originals (its own included) are exactly as near; 0 otherwise. The mean is
        the rank-1 accuracy; a constant query set scores exactly 1 / N on average.
    """
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries (Q, D) and gallery (N, D) must share D, got {tuple(queries.shape)} "
                         f"and {tuple(gallery.shape)}")
    if own is None:
        if queries.shape[0] != gallery.shape[0]:
            raise ValueError(f"without `own`, queries and gallery must be as many, got {queries.shape[0]} "
                             f"and {gallery.shape[0]}")
        own = torch.arange(queries.shape[0], device=queries.device)
    q = F.normalize(queries.double(), dim=1)
    g = F.normalize(gallery.double().to(q.device), dim=1)
    own = own.to(q.device).long()
    out = torch.empty(q.shape[0], dtype=torch.float64, device=q.device)
    for start in range(0, q.shape[0], BLOCK):
        sims = q[start:start + BLOCK] @ g.T  # (b, N)
        mine = sims.gather(1, own[start:start + BLOCK, None])  # (b, 1)
        nearer = (sims > mine).sum(1)
        ties = (sims == mine).sum(1)  # its own included: >= 1
        out[start:start + BLOCK] = torch.where(nearer == 0, 1.0 / ties.double(), torch.zeros_like(mine[:, 0]))
    return out


class EmbeddingPairs:
    """The per-image store of a leakage row: (B, D) embeddings of the reconstructions (queries)
    and of their originals (gallery), in the same order, kept in float16
    :class:`~reconattack.metrics.states.Collect` stores (the part that grows with the test set)
    and concatenated over DDP processes by :meth:`gathered` (which every process must call)."""

    def __init__(self) -> None:
        self.queries, self.gallery = Collect(), Collect()

    def update(self, pred_embedding: Tensor, target_embedding: Tensor) -> None:
        """Add a batch: (B, D) embeddings of the reconstructions and of their originals, in the
        same order."""
        if pred_embedding.shape != target_embedding.shape:
            raise ValueError(f"embeddings differ in shape: {tuple(pred_embedding.shape)} vs "
                             f"{tuple(target_embedding.shape)}")
        # float16: the per-image store is what grows with the test set (compared in float64)
        self.queries.update(pred_embedding.detach().to(torch.float16))
        self.gallery.update(target_embedding.detach().to(torch.float16))

    def to(self, device: torch.device):
        self.queries.to(device)
        self.gallery.to(device)
        return self

    def gathered(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(queries (M, D), distinct originals (N, D), own (M,))`` over every process's images,
        float64: an original seen twice (a DDP sampler's padding) is one gallery item, ``own[a]``
        the index of query ``a``'s; None without data."""
        q, g = compute_state(self.queries), compute_state(self.gallery)  # (M, D) each
        if not q.numel():
            return None
        distinct, own = torch.unique(g.double(), dim=0, return_inverse=True)
        return q.double(), distinct, own

    def reset(self) -> None:
        self.queries.reset()
        self.gallery.reset()


class ImageRetrieval(EmbeddingPairs):
    """Rank-1 retrieval of each reconstruction's own original among the evaluation's originals,
    for one row and one named embedding (see the module docstring).

    What it compares: reconstructions (queries) against the held-out originals of the same
    evaluation (gallery), by cosine similarity of ``embedding``.

    Args:
        embedding: the embedding's name (``"clip"``, ``"hog"``): the metric keys carry it.
    """

    def __init__(self, embedding: str) -> None:
        super().__init__()
        self.embedding = str(embedding)

    @property
    def prefix(self) -> str:
        return f"retrieval/{self.embedding}/"

    def compute(self) -> dict[str, float | int | str]:
        """``{"retrieval/<e>/rank1", ".../chance", ".../n"}`` over every process's images. Empty
        without data; a missing entry with fewer than 2 distinct originals (nothing to retrieve
        among)."""
        pairs = self.gathered()
        if pairs is None:
            return {}
        q, distinct, own = pairs
        n = int(distinct.shape[0])
        if n < 2:
            return {f"{self.prefix}rank1": f"{MISSING_PREFIX}retrieval needs at least 2 distinct originals, got {n}"}
        scores = retrieval_rank1(q, distinct, own)
        return {f"{self.prefix}rank1": float(scores.mean()), f"{self.prefix}chance": 1.0 / n,
                f"{self.prefix}n": n}


__all__ = ["BLOCK", "EMBEDDINGS", "EmbeddingPairs", "ImageRetrieval", "retrieval_rank1"]
