"""Exact dedup on normalised text; MinHash signatures equal datasketch's; planted near-duplicates found at the
threshold while distinct rows are kept."""

import random

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from posttrain.hygiene.dedup import ExactDeduper, NearDeduper, band_keys, permutations, shingle_hashes, signatures
from posttrain.hygiene.text import Folding, normalise


def test_normalise_folds_configurably():
    text = "Hello,   World!\n"
    assert normalise(text) == "hello world"
    assert normalise(text, Folding(case=False)) == "Hello World"
    assert normalise(text, Folding(punctuation=False)) == "hello, world!"
    assert normalise(text, Folding(whitespace=False, punctuation=False)) == "hello,   world!\n"


def test_exact_dedup_keeps_first_and_respects_folding():
    d = ExactDeduper()
    assert d.seen("Hello, world", 1) is None
    assert d.seen("hello   WORLD!", 2) == 1
    assert d.seen("hello there", 3) is None
    assert len(d) == 2
    strict = ExactDeduper(Folding(case=False, whitespace=False, punctuation=False))
    assert strict.seen("Hello, world", 1) is None
    assert strict.seen("hello, world", 2) is None  # case now matters


def test_signatures_equal_datasketch_minhash():
    a, b = permutations(64, seed=7)
    token_lists = [t.split() for t in ("the quick brown fox jumps over the lazy dog and runs away fast",
                                       "short text", "", "one two three four five six")]
    hashes, counts = shingle_hashes(token_lists, 3)
    assert list(counts) == [11, 1, 1, 4]  # 13 words -> 11 trigrams; short and empty rows: 1
    ours = signatures(hashes, counts, a, b)
    assert np.array_equal(ours, signatures(hashes, counts, a, b, chunk=2))  # chunking does not change results
    start = 0
    for row, n in enumerate(counts):
        reference = MinHash(num_perm=64, seed=7, hashfunc=lambda x: x, scheme="affine32")
        reference.update_batch([int(h) for h in hashes[start:start + n]])
        start += n
        assert np.array_equal(ours[row], reference.hashvalues)


def test_band_candidates_equal_datasketch_lsh():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(300)]
    base = [[rng.choice(vocab) for _ in range(40)] for _ in range(30)]
    texts = [" ".join(t) for t in base] + [" ".join(t[:-3] + ["x", "y", "z"]) for t in base[:10]]
    near = NearDeduper(threshold=0.5, shingle_size=3, num_perm=64)
    sigs = near.signatures(texts)
    keys = band_keys(sigs, near.bands, near.rows).tolist()
    lsh = MinHashLSH(threshold=0.5, num_perm=64)
    for i, sig in enumerate(sigs):
        m = MinHash(num_perm=64, seed=1, hashvalues=sig, permutations=(near.a, near.b), scheme="affine32")
        assert set(lsh.query(m)) == near.candidates(keys[i])
        lsh.insert(i, m)
        near._keep(sig, i, keys[i])
    assert (lsh.b, lsh.r) == (near.bands, near.rows)


def _doc(rng, vocab, n=100):
    return " ".join(rng.choice(vocab) for _ in range(n))


def test_planted_near_duplicates_found_and_distinct_rows_kept():
    rng = random.Random(1)
    vocab = [f"word{i}" for i in range(2000)]
    originals = [_doc(rng, vocab) for _ in range(200)]
    rows, planted = list(originals), {}
    for i in range(0, 200, 10):  # 20 near-copies: one word of 100 changed (5-shingle Jaccard 91/101 = 0.90)
        tokens = originals[i].split()
        tokens[50] = "CHANGED"
        planted[len(rows) + 1] = i + 1  # line of the copy -> line of its original
        rows.append(" ".join(tokens))
    near = NearDeduper(threshold=0.8, shingle_size=5)
    verdicts = []
    for start in range(0, len(rows), 64):
        verdicts += near.add_batch(list(range(start + 1, start + 1 + len(rows[start:start + 64]))),
                                   rows[start:start + 64])
    found = {line: v[0] for line, v in enumerate(verdicts, 1) if v is not None}
    assert found == planted
    assert len(near) == 200 and len(near.clusters) == 20
    assert all(0.8 <= v[1] < 1.0 for v in verdicts if v is not None)


def test_threshold_decides():
    base = " ".join(f"t{i}" for i in range(40))
    edited = base.replace("t39", "zz")  # the last shingle differs: Jaccard 35/37 ~ 0.95
    loose = NearDeduper(threshold=0.8, shingle_size=5)
    assert loose.add_batch([1, 2], [base, edited])[1][0] == 1
    tight = NearDeduper(threshold=1.0, shingle_size=5)
    assert tight.add_batch([1, 2], [base, edited])[1] is None


def test_bad_parameters():
    with pytest.raises(ValueError, match="threshold"):
        NearDeduper(threshold=0.0)
    with pytest.raises(ValueError, match="shingle size"):
        NearDeduper(shingle_size=0)
