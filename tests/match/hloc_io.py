"""hloc_io.py : hloc's side of matches.h5, re-implemented for the tests.

Faithful copies (same logic, same names) of what hloc uses to read the
files featstore writes, and an independent numpy implementation of hloc's
`nearest_neighbor` matcher, so that featstore's output can be checked
without hloc or torch installed.

  hloc/utils/io.py          names_to_pair, names_to_pair_old, find_pair,
                            get_matches
  hloc/utils/parsers.py     parse_retrieval
  hloc/match_features.py    find_unique_new_pairs, the pair list order
  hloc/matchers/nearest_neighbor.py   find_nn, mutual_check, NearestNeighbor
"""
from collections import defaultdict

import h5py
import numpy as np

PRESETS = {
    "NN-mutual": {"do_mutual_check": True, "ratio_threshold": None, "distance_threshold": None},
    "NN-ratio": {"do_mutual_check": True, "ratio_threshold": 0.8, "distance_threshold": None},
    "NN-superpoint": {"do_mutual_check": True, "ratio_threshold": None,
                      "distance_threshold": 0.7},
}


# ---- hloc/utils/io.py -----------------------------------------------------

def names_to_pair(name0, name1, separator="/"):
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def names_to_pair_old(name0, name1):
    return names_to_pair(name0, name1, separator="_")


def find_pair(hfile, name0, name1):
    pair = names_to_pair(name0, name1)
    if pair in hfile:
        return pair, False
    pair = names_to_pair(name1, name0)
    if pair in hfile:
        return pair, True
    # older, less efficient format
    pair = names_to_pair_old(name0, name1)
    if pair in hfile:
        return pair, False
    pair = names_to_pair_old(name1, name0)
    if pair in hfile:
        return pair, True
    raise ValueError(
        f"Could not find pair {(name0, name1)}... "
        "Maybe you matched with a different list of pairs? "
    )


def get_matches(path, name0, name1):
    with h5py.File(str(path), "r", libver="latest") as hfile:
        pair, reverse = find_pair(hfile, name0, name1)
        matches = hfile[pair]["matches0"].__array__()
        scores = hfile[pair]["matching_scores0"].__array__()
    idx = np.where(matches != -1)[0]
    matches = np.stack([idx, matches[idx]], -1)
    if reverse:
        matches = np.flip(matches, -1)
    scores = scores[idx]
    return matches, scores


# ---- hloc/utils/parsers.py + match_features.py ------------------------------

def parse_retrieval(text):
    """hloc's parse_retrieval on a string, with featstore's extensions,
    which read no line differently from hloc: a UTF-8 byte-order mark at the
    start is removed; blank (whitespace-only) lines, and '#' lines that do
    not hold two names (hloc would refuse them), are skipped. A '#' line of
    two names is a pair, as in hloc."""
    retrieval = defaultdict(list)
    if text.startswith("\ufeff"):
        text = text[1:]
    for p in text.rstrip("\n").split("\n"):
        if len(p.strip()) == 0 or (p.strip().startswith("#") and len(p.split()) != 2):
            continue
        q, r = p.split()
        retrieval[q].append(r)
    return dict(retrieval)


def hloc_pairs(text):
    """The pairs hloc's match_features matches, in featstore's order (hloc
    puts them in a set; the orientation kept is the same)."""
    pairs = parse_retrieval(text)
    pairs = [(q, r) for q, rs in pairs.items() for r in rs]
    kept, out = set(), []
    for i, j in pairs:               # find_unique_new_pairs
        if (j, i) not in kept:
            if (i, j) not in kept:
                out.append((i, j))
            kept.add((i, j))
    return out


# ---- hloc/matchers/nearest_neighbor.py, in numpy ----------------------------

def _topk2(sim):
    """torch.topk(sim, 2, dim=-1): values and indices, ties to the lowest
    index first."""
    n, m = sim.shape
    j1 = np.argmax(sim, axis=1)                 # first maximum: lowest index
    s1 = sim[np.arange(n), j1]
    if m >= 2:
        masked = sim.copy()
        masked[np.arange(n), j1] = -np.inf
        s2 = masked.max(axis=1)
    else:
        s2 = np.full(n, -np.inf, np.float32)
    return s1.astype(np.float32), s2.astype(np.float32), j1


def find_nn(sim, ratio_thresh, distance_thresh):
    s1, s2, j1 = _topk2(sim)
    dist1 = np.float32(2) * (np.float32(1) - s1)
    mask = np.ones(sim.shape[0], bool)
    if ratio_thresh:
        dist2 = np.float32(2) * (np.float32(1) - s2)
        mask &= dist1 <= np.float32(ratio_thresh ** 2) * dist2
    if distance_thresh:
        mask &= dist1 <= np.float32(distance_thresh ** 2)
    matches = np.where(mask, j1, -1)
    scores = np.where(mask, (s1 + np.float32(1)) / np.float32(2), np.float32(0))
    return matches, scores.astype(np.float32)


def mutual_check(m0, m1):
    inds0 = np.arange(m0.shape[-1])
    loop = m1[np.where(m0 > -1, m0, 0)]
    ok = (m0 > -1) & (inds0 == loop)
    return np.where(ok, m0, -1)


def nn_match(desc0, desc1, conf):
    """desc0 (D, N0), desc1 (D, N1) as stored (float16 or float32).
    Returns hloc's matches0 (int64) and matching_scores0 (float32) and, for
    the tests, a per-row margin: how far row i is from flipping (a near tie
    or a threshold), in float32 units of sim."""
    d0 = np.asarray(desc0, np.float32)
    d1 = np.asarray(desc1, np.float32)
    n0 = d0.shape[1] if d0.ndim == 2 else 0
    n1 = d1.shape[1] if d1.ndim == 2 else 0
    if n0 == 0 or n1 == 0:
        return np.full(n0, -1, np.int64), np.zeros(n0, np.float32), np.full(n0, np.inf)
    ratio = conf["ratio_threshold"]
    if n0 == 1 or n1 == 1:
        ratio = None
    sim = np.einsum("dn,dm->nm", d0, d1).astype(np.float32)
    m0, sc0 = find_nn(sim, ratio, conf["distance_threshold"])
    margin = _margins(sim, ratio, conf["distance_threshold"])
    if conf["do_mutual_check"]:
        m1, _ = find_nn(sim.T, ratio, conf["distance_threshold"])
        mb = _margins(sim.T, ratio, conf["distance_threshold"])
        m0 = mutual_check(m0, m1)
        # a row also flips when the backward decision of its candidate does
        s1, s2, j1 = _topk2(sim)
        margin = np.minimum(margin, mb[j1])
    return m0.astype(np.int64), sc0, margin


def _margins(sim, ratio, dist):
    s1, s2, _ = _topk2(sim)
    m = np.abs(s1 - s2)
    d1 = 2 * (1 - s1.astype(np.float64))
    if ratio:
        d2 = 2 * (1 - s2.astype(np.float64))
        m = np.minimum(m, np.abs(d1 - ratio ** 2 * d2))
    if dist:
        m = np.minimum(m, np.abs(d1 - dist ** 2))
    return m


def load_features(path):
    """{name: descriptors (D, N)} of an hloc features.h5 (nested names)."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "descriptors" in obj:
                out[name] = obj["descriptors"][()]
        f.visititems(visit)
    return out


def check_pair(path, feats0, feats1, name0, name1, conf, tie_margin=1e-5):
    """Compare featstore's result for (name0, name1), read the way hloc
    reads it, with the numpy matcher. Returns (n_rows, n_mismatch) where a
    mismatch is a row that differs though the reference is not near a
    tie/threshold; raises AssertionError on a real difference."""
    matches, scores = get_matches(path, name0, name1)
    with h5py.File(path, "r") as f:
        pair, rev = find_pair(f, name0, name1)
        m0_file = f[pair]["matches0"][()]
        s0_file = f[pair]["matching_scores0"][()]
        assert f[pair]["matching_scores0"].dtype == np.float16, f[pair]["matching_scores0"].dtype
    a, b = (name1, name0) if rev else (name0, name1)
    fa, fb = (feats1, feats0) if rev else (feats0, feats1)
    ref_m, ref_s, margin = nn_match(fa[a], fb[b], conf)
    assert m0_file.shape == ref_m.shape, (pair, m0_file.shape, ref_m.shape)
    diff = np.nonzero(m0_file.astype(np.int64) != ref_m)[0]
    bad = [int(i) for i in diff if margin[i] > tie_margin]
    assert not bad, (f"{pair}: rows {bad[:10]} differ from hloc's matcher "
                     f"(file {m0_file[bad[:5]]}, ref {ref_m[bad[:5]]}, margin {margin[bad[:5]]})")
    same = m0_file.astype(np.int64) == ref_m
    # scores: float16 of the float32 score, where the match agrees
    ref16 = ref_s.astype(np.float16).astype(np.float32)
    got = s0_file.astype(np.float32)
    tol = np.float32(2 ** -10) * np.maximum(np.abs(ref16), 2 ** -14) + 1e-6
    off = np.nonzero(same & (margin > tie_margin) & (np.abs(got - ref16) > tol))[0]
    assert not len(off), (f"{pair}: scores differ at rows {off[:10]}: {got[off[:5]]} vs "
                          f"{ref16[off[:5]]}")
    # hloc's get_matches agrees with the raw datasets
    idx = np.where(m0_file != -1)[0]
    want = np.stack([idx, m0_file[idx]], -1)
    if rev:
        want = np.flip(want, -1)
    assert np.array_equal(matches, want)
    assert np.array_equal(scores, s0_file[idx])
    return len(ref_m), len(diff)
