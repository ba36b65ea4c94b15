"""Duplicate removal: exact (an 8-byte digest of the normalised key text) and near (MinHash + LSH).

Both keep the *first* row of a group as its representative and remember only representatives, so memory grows
with the number of distinct rows, never with the file.

MinHash signatures are computed a batch of rows at a time with numpy, with datasketch's ``affine32`` scheme
(the MurmurHash3 finalizer, then ``a * h + b mod 2**32`` per permutation, the same ``a, b`` datasketch draws
from ``seed``): a signature here equals ``datasketch.MinHash(num_perm, seed, scheme="affine32")`` fed the same
shingle hashes (a test checks it), but costs a few array operations per batch instead of several per row. The LSH index
is ``datasketch.MinHashLSH``; its candidates are confirmed by the signatures' estimated Jaccard similarity.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from posttrain.hygiene.text import Folding, digest, normalise


class ExactDeduper:
    """``seen(text)`` -> the line of the first row with the same normalised text, or None (and remembers it)."""

    def __init__(self, folding: Folding = Folding()):
        self.folding = folding
        self._first: dict[bytes, int] = {}

    def seen(self, text: str, line: int) -> int | None:
        key = digest(normalise(text, self.folding))
        first = self._first.get(key)
        if first is None:
            self._first[key] = line
        return first

    def __len__(self) -> int:
        return len(self._first)


SHINGLE_BASE = np.uint32(0x01000193)  # FNV prime: shingle hash = sum_j fmix(token_j) * BASE**j mod 2**32


def _fmix32(hv: np.ndarray) -> np.ndarray:
    # MurmurHash3's 32-bit finalizer (datasketch._fmix for width 32); uint32 arithmetic wraps modulo 2**32.
    hv = hv ^ (hv >> np.uint32(16))
    hv = hv * np.uint32(0x85EBCA6B)
    hv = hv ^ (hv >> np.uint32(13))
    hv = hv * np.uint32(0xC2B2AE35)
    return hv ^ (hv >> np.uint32(16))


def shingle_hashes(token_lists: list[list[str]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word ``size``-gram of every row, in row order: ``(S,)`` uint32, and ``(R,)`` counts.

    A row shorter than ``size`` words is padded with zero hashes (``fmix(0) == 0``), so it is one shingle: its
    whole text. Hashing is vectorised: one CRC32 per token in Python, then ``size`` array passes for the batch.
    """
    flat: list[int] = []
    lengths = np.empty(len(token_lists), dtype=np.int64)
    for i, tokens in enumerate(token_lists):
        # CRC32 of each token: deterministic, C speed, no Python call per token; _fmix32 does the mixing.
        flat.extend(map(zlib.crc32, map(str.encode, tokens)))
        if len(tokens) < size:
            flat.extend([0] * (size - len(tokens)))
        lengths[i] = max(len(tokens), size)
    with np.errstate(over="ignore"):
        tok = _fmix32(np.array(flat, dtype=np.uint32))  # (T,)
        n_windows = len(tok) - size + 1
        hashes = np.zeros(n_windows, dtype=np.uint32)
        power = np.uint32(1)
        for j in range(size):
            hashes += tok[j:j + n_windows] * power
            power = power * SHINGLE_BASE
    row_of = np.repeat(np.arange(len(token_lists)), lengths)  # (T,) row of each token
    inside = row_of[:n_windows] == row_of[size - 1:]  # windows that do not straddle two rows
    return hashes[inside], lengths - size + 1


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters ``(a, b)``, each ``(num_perm,)`` uint32."""
    from datasketch import MinHash  # datasketch imports scipy (0.5 s): only near dedup needs it

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signatures(hashes: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 8192
               ) -> np.ndarray:
    """MinHash signatures ``(R, num_perm)`` uint32 of rows whose shingle hashes are ``hashes`` ``(S,)``, row
    ``r`` owning ``counts[r]`` (>= 1) consecutive entries.

    Permuted values are laid out ``(num_perm, S_chunk)`` so ``np.minimum.reduceat`` runs along contiguous memory
    (measured ~5x faster than ``(S, num_perm)``); rows are grouped so a chunk holds about ``chunk`` shingles.
    """
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    hv = _fmix32(hashes.astype(np.uint32))
    out = np.empty((len(counts), len(a)), dtype=np.uint32)
    row = 0
    with np.errstate(over="ignore"):
        while row < len(counts):
            end_row = int(np.searchsorted(starts, starts[row] + chunk, side="right"))
            end_row = max(end_row, row + 1)
            lo, hi = starts[row], starts[end_row - 1] + counts[end_row - 1]
            phv = a[:, None] * hv[None, lo:hi]  # (num_perm, S_chunk)
            phv += b[:, None]
            out[row:end_row] = np.minimum.reduceat(phv, starts[row:end_row] - lo, axis=1).T
            row = end_row
    return out


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per (row, band): the band's ``rows`` values folded FNV-style. ``(R, bands)``."""
    keys = np.full((len(sigs), bands), np.uint64(0xCBF29CE484222325), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            column = sigs[:, j: bands * rows: rows].astype(np.uint64)  # (R, bands): value j of every band
            keys = (keys ^ column) * np.uint64(0x100000001B3)
    return keys


@dataclass
class Cluster:
    representative: int  # line of the kept row
    members: list[tuple[int, float]] = field(default_factory=list)  # (line, estimated Jaccard) of removed rows


class NearDeduper:
    """MinHash LSH near-duplicate removal at Jaccard ``threshold`` over word ``shingle_size``-grams.

    ``add_batch(lines, texts)`` returns, for each row, ``(line of the representative it duplicates, estimated
    Jaccard)`` or None (the row is new and becomes a representative). Rows of a batch are checked against each
    other too. The band layout ``(b, r)`` is datasketch's optimum for ``threshold`` and ``num_perm``
    (``MinHashLSH(threshold, num_perm).b / .r``), and band ``i`` covers values ``[i*r, (i+1)*r)`` as in
    datasketch; the tables are one dict per band from a uint64 band key to the representative(s) with that
    key, because datasketch's own storage costs ~250 us per row in Python (measured), which is 4 min per 1M rows.
    """

    def __init__(self, threshold: float = 0.8, shingle_size: int = 5, num_perm: int = 128, seed: int = 1,
                 folding: Folding = Folding()):
        from datasketch import MinHashLSH  # imports scipy (0.5 s): only near dedup needs it

        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        if shingle_size < 1:
            raise ValueError(f"shingle size must be >= 1, got {shingle_size}")
        self.threshold, self.shingle_size, self.num_perm, self.seed = threshold, shingle_size, num_perm, seed
        self.folding = folding
        self.a, self.b = permutations(num_perm, seed)
        # datasketch finds no layout with >= 2 bands close to 1.0; 0.95's layout still catches J = 1.0 rows.
        layout = MinHashLSH(threshold=min(threshold, 0.95), num_perm=num_perm)
        self.bands, self.rows = layout.b, layout.r
        self._tables: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self._rep_sigs = np.empty((1024, num_perm), dtype=np.uint32)  # signatures of representatives, by index
        self._rep_lines: list[int] = []
        self.clusters: dict[int, Cluster] = {}  # representative line -> cluster (only those with members)

    def signatures(self, texts: list[str]) -> np.ndarray:
        token_lists = [normalise(t, self.folding).split() for t in texts]
        return signatures(*shingle_hashes(token_lists, self.shingle_size), self.a, self.b)

    def candidates(self, keys) -> set[int]:
        """Representative indices sharing at least one band key."""
        found: set[int] = set()
        for table, key in zip(self._tables, keys):
            hit = table.get(key)
            if hit is not None:
                if isinstance(hit, list):
                    found.update(hit)
                else:
                    found.add(hit)
        return found

    def _keep(self, sig: np.ndarray, line: int, keys) -> None:
        index = len(self._rep_lines)
        if index == len(self._rep_sigs):
            self._rep_sigs = np.concatenate([self._rep_sigs, np.empty_like(self._rep_sigs)])
        self._rep_sigs[index] = sig
        self._rep_lines.append(line)
        for table, key in zip(self._tables, keys):
            hit = table.get(key)
            if hit is None:
                table[key] = index
            elif isinstance(hit, list):
                hit.append(index)
            else:
                table[key] = [hit, index]

    def add_batch(self, lines: list[int], texts: list[str]) -> list[tuple[int, float] | None]:
        sigs = self.signatures(texts)
        all_keys = band_keys(sigs, self.bands, self.rows).tolist()  # Python ints: fast dict keys
        out: list[tuple[int, float] | None] = []
        for line, sig, keys in zip(lines, sigs, all_keys):
            found = self.candidates(keys)
            best: tuple[int, float] | None = None
            if found:
                idx = np.fromiter(found, dtype=np.int64, count=len(found))
                similarity = (self._rep_sigs[idx] == sig[None, :]).mean(axis=1)  # estimated Jaccard
                top = int(np.argmax(similarity))
                if similarity[top] >= self.threshold:
                    best = (self._rep_lines[int(idx[top])], round(float(similarity[top]), 4))
            if best is None:
                self._keep(sig, line, keys)
            else:
                self.clusters.setdefault(best[0], Cluster(best[0])).members.append((line, best[1]))
            out.append(best)
        return out

    def __len__(self) -> int:
        return len(self._rep_lines)
