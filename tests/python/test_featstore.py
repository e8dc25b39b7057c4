"""tests/python/test_featstore.py : `import featstore` (issue 13), with pytest.

Run by tests/python/run_pytest.py (meson test --suite python), which needs
$FEATSTORE (the featstore program) and PYTHONPATH=<build>/tools/python.
"""
import gc
import hashlib
import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import featstore

FST = os.environ["FEATSTORE"]
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from caselib import h5_content  # noqa: E402

D = 64


def cli(*args, check=True):
    p = subprocess.run([FST, *map(str, args)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"featstore {args}: {p.returncode}\n{p.stderr}")
    return p


def write_h5(path, images, dtype=np.float32, seed=3):
    """hloc's layout: a group per image, descriptors D x N."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w", libver="latest") as f:
        for name, n in images.items():
            g = f.create_group(name)
            g.create_dataset("keypoints",
                             data=(rng.random((n, 2)) * 640).astype(np.float32))
            d = rng.standard_normal((D, n)).astype(np.float32)
            d /= np.maximum(np.linalg.norm(d, axis=0), 1e-6)
            g.create_dataset("descriptors", data=d.astype(dtype))
            g.create_dataset("scores", data=rng.random(n).astype(np.float32))
            g.create_dataset("image_size", data=np.array([640, 480]))
    return path


NAMES = {
    "db/seq1/0001.jpg": 300,
    "db/seq1/0002.jpg": 0,
    "db/ünïcödé/日本/フレーム 7.png": 120,
    "query/a/b/c/d/e/q1.jpg": 57,
    "q2.jpg": 1,
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A store of NAMES (unicode and nested names, an empty image) and the
    features.h5 it came from."""
    d = tmp_path_factory.mktemp("small")
    h5 = write_h5(d / "features.h5", NAMES)
    cli("import", h5, d / "db.fst", "--quiet")
    return d / "db.fst", h5


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A synthetic store with planted matches and its pairs file."""
    d = tmp_path_factory.mktemp("synth")
    cli("synth", d / "f.h5", "--pairs", d / "pairs.txt", "--images", "12",
        "--keypoints", "512", "--dim", "64", "--npairs", "30", "--quiet")
    cli("import", d / "f.h5", d / "db.fst", "--quiet")
    return d


def anon_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


# ---- content, names, zero-copy ----

def test_content_matches_h5(small):
    path, h5 = small
    store = featstore.open(path)
    assert len(store) == len(NAMES)
    assert sorted(store.names()) == sorted(NAMES, key=lambda s: s.encode())
    assert set(store) == set(NAMES)
    with h5py.File(h5, "r") as f:
        for name in NAMES:
            assert name in store
            rec = store[name]
            assert rec.name == name
            g = f[name]
            np.testing.assert_array_equal(rec.keypoints, g["keypoints"][()])
            np.testing.assert_array_equal(rec.descriptors, g["descriptors"][()].T)
            np.testing.assert_array_equal(rec.scores, g["scores"][()])
            assert rec.image_size == (640, 480)
            assert rec.descriptors.dtype == np.float32
            assert rec.keypoints.shape == (NAMES[name], 2)
            assert rec.descriptors.shape == (NAMES[name], D)
            for a in (rec.keypoints, rec.descriptors, rec.scores):
                assert not a.flags.writeable
                with pytest.raises(ValueError):
                    a[...] = 0
    assert "nope" not in store and 42 not in store


def test_float16_descriptors(tmp_path):
    h5 = write_h5(tmp_path / "f.h5", {"a": 10, "b/c": 3}, dtype=np.float16)
    cli("import", h5, tmp_path / "db.fst", "--quiet")
    rec = featstore.open(tmp_path / "db.fst")["b/c"]
    assert rec.descriptors.dtype == np.float16
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(rec.descriptors, f["b/c/descriptors"][()].T)


def test_zero_copy_address_in_map(small):
    store = featstore.open(small[0])
    lo, n = store._map_range()
    for name in NAMES:
        rec = store[name]
        for a in (rec.keypoints, rec.descriptors, rec.scores):
            if a.size:
                addr = a.__array_interface__["data"][0]
                assert lo <= addr and addr + a.nbytes <= lo + n, name
        assert not rec.descriptors.flags.owndata


def test_scales_oris_zero_copy(small, tmp_path):
    # hloc's DoG (SIFT) extractor writes `scales` and `oris` (N,) float32
    # (tests/cli/make_hloc.py --dog); an image without them reads None.
    images = {"dog/a.jpg": 200, "dog/b.jpg": 7, "plain.jpg": 30}
    h5 = write_h5(tmp_path / "f.h5", images)
    rng = np.random.default_rng(5)
    with h5py.File(h5, "r+") as f:
        for name in ("dog/a.jpg", "dog/b.jpg"):
            n = images[name]
            f[name].create_dataset(
                "scales", data=(1.6 + rng.random(n) * 20).astype(np.float32))
            f[name].create_dataset(
                "oris", data=((rng.random(n) * 2 - 1) * np.pi).astype(np.float32))
    cli("import", h5, tmp_path / "db.fst", "--quiet")
    store = featstore.open(tmp_path / "db.fst")
    lo, size = store._map_range()
    with h5py.File(h5, "r") as f:
        for name in ("dog/a.jpg", "dog/b.jpg"):
            rec = store[name]
            for a, key in ((rec.scales, "scales"), (rec.oris, "oris")):
                assert isinstance(a, np.ndarray), (name, key)
                assert a.dtype == np.float32 and a.shape == (images[name],)
                np.testing.assert_array_equal(a, f[name][key][()])
                assert not a.flags.writeable and not a.flags.owndata
                with pytest.raises(ValueError):
                    a[...] = 0
                addr = a.__array_interface__["data"][0]
                assert lo <= addr and addr + a.nbytes <= lo + size, (name, key)
    rec = store["plain.jpg"]
    assert rec.scales is None and rec.oris is None
    info = store.info()
    assert info["images_with_scales"] == 2 and info["images_with_oris"] == 2
    assert info == json.loads(cli("info", tmp_path / "db.fst", "--json").stdout)
    rec = featstore.open(small[0])["db/seq1/0001.jpg"]
    assert rec.scales is None and rec.oris is None


def test_zero_copy_memory_flat(tmp_path):
    # 4 MB of descriptors per lookup, 2000 lookups all kept alive: a copy
    # per lookup would grow the process by 8 GB; the map is file-backed and
    # never counted in RssAnon.
    h5 = write_h5(tmp_path / "f.h5", {"big": 16384})
    cli("import", h5, tmp_path / "db.fst", "--quiet")
    store = featstore.open(tmp_path / "db.fst")
    store.snapshot_s = 3600
    first = store["big"]
    nbytes = first.descriptors.nbytes
    assert nbytes == 16384 * D * 4
    before = anon_kb()
    kept = [store["big"].descriptors for _ in range(2000)]
    s = sum(float(a[0, 0]) + float(a[-1, -1]) for a in kept)
    grown = (anon_kb() - before) * 1024
    assert np.isfinite(s)
    assert grown < 64 << 20, f"grew {grown} bytes for {len(kept)} lookups of {nbytes}"
    assert store._nsnapshots == 1


def test_torch_from_numpy_no_copy(small):
    torch = pytest.importorskip("torch")
    rec = featstore.open(small[0])["db/seq1/0001.jpg"]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # "non-writable tensors"
        t = torch.from_numpy(rec.descriptors)
    assert t.data_ptr() == rec.descriptors.__array_interface__["data"][0]
    assert torch.equal(t, torch.from_numpy(rec.descriptors.copy()))


# ---- errors ----

def test_missing_name_is_keyerror(small):
    store = featstore.open(small[0])
    with pytest.raises(KeyError) as e:
        store["db/seq1/none.jpg"]
    assert "db/seq1/none.jpg" in str(e.value) and str(small[0]) in str(e.value)
    assert isinstance(e.value, featstore.Error)
    assert e.value.status == "ENOTFOUND"
    assert store.get("db/seq1/none.jpg") is None
    with pytest.raises(KeyError):
        store["a\0b"]


def test_missing_store(tmp_path):
    with pytest.raises(featstore.Error) as e:
        featstore.open(tmp_path / "none.fst")
    assert "none.fst" in str(e.value)


def test_not_a_store(tmp_path):
    p = tmp_path / "x.fst"
    p.write_bytes(b"x" * 20000)
    with pytest.raises(featstore.FormatError) as e:
        featstore.open(p)
    assert str(p) in str(e.value)


def test_truncated_store(small, tmp_path):
    p = tmp_path / "t.fst"
    data = small[0].read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(featstore.CorruptError) as e:
        featstore.open(p)
    assert "truncated" in str(e.value) and str(p) in str(e.value)
    cli_err = cli("info", p, check=False).stderr
    assert str(e.value) in cli_err          # the CLI's message


def test_corrupt_record(small, tmp_path):
    path, _ = small
    store = featstore.open(path)
    good = store["db/seq1/0001.jpg"].descriptors.tobytes()
    del store
    gc.collect()
    data = bytearray(path.read_bytes())
    i = data.find(good[:4096])
    assert i > 0
    data[i + 100] ^= 0xFF
    p = tmp_path / "c.fst"
    p.write_bytes(bytes(data))
    with pytest.raises(featstore.CorruptError) as e:
        featstore.open(p, checksums=True)["db/seq1/0001.jpg"]
    assert "db/seq1/0001.jpg" in str(e.value) and str(p) in str(e.value)
    assert e.value.status == "ECORRUPT"
    # without checksums the bounds still hold; another record is fine
    assert featstore.open(p, checksums=True)["q2.jpg"].keypoints.shape == (1, 2)


def test_newer_format(small, tmp_path):
    data = small[0].read_bytes()
    key = b"format_major" + (1).to_bytes(8, "little")
    assert key in data
    p = tmp_path / "v.fst"
    p.write_bytes(data.replace(key, b"format_major" + (99).to_bytes(8, "little")))
    with pytest.raises(featstore.VersionError) as e:
        featstore.open(p)
    assert "99" in str(e.value)


# ---- lifetimes ----

def test_arrays_outlive_store_and_record(small):
    store = featstore.open(small[0])
    rec = store["db/seq1/0001.jpg"]
    desc, kp = rec.descriptors, rec.keypoints
    want = desc.copy()
    del store, rec
    gc.collect()
    junk = [np.ones(1 << 16) for _ in range(100)]    # reuse freed memory
    np.testing.assert_array_equal(desc, want)
    assert kp.shape == (300, 2)
    del junk


def test_close_with_live_arrays(small):
    store = featstore.open(small[0])
    desc = store["db/seq1/0001.jpg"].descriptors
    want = desc.copy()
    store.close()
    assert store.closed
    with pytest.raises(ValueError, match="closed"):
        store["q2.jpg"]
    assert store._mapped                # the unmap waits for the array
    np.testing.assert_array_equal(desc, want)
    del desc
    gc.collect()
    assert not store._mapped            # ...and happens when it goes
    store.close()                       # twice is fine


def test_context_manager(small):
    with featstore.open(small[0]) as store:
        n = len(store["db/seq1/0001.jpg"])
    assert n == 300 and store.closed and not store._mapped


def test_snapshots_shared_and_renewed(small):
    store = featstore.open(small[0])
    store.snapshot_s = 3600
    recs = [store[n] for n in NAMES for _ in range(50)]
    assert store._nsnapshots == 1
    store.snapshot_s = 0
    more = [store["q2.jpg"] for _ in range(3)]
    assert store._nsnapshots == 4
    del recs, more
    gc.collect()
    assert store._nsnapshots == 0


def test_info_matches_cli(small):
    store = featstore.open(small[0])
    assert store.info() == json.loads(cli("info", small[0], "--json").stdout)


def test_pickle_is_path(small):
    store = featstore.open(small[0], checksums=True)
    data = pickle.dumps(store)
    assert len(data) < 300
    again = pickle.loads(data)
    assert again.path == store.path and again.checksums
    np.testing.assert_array_equal(again["q2.jpg"].descriptors,
                                  store["q2.jpg"].descriptors)


# ---- processes ----

def digest(store, names=None):
    h = hashlib.sha256()
    for n in sorted(names or store.names()):
        r = store[n]
        h.update(n.encode())
        h.update(r.keypoints.tobytes())
        h.update(r.descriptors.tobytes())
    return h.hexdigest()


def _child_digest(store, q):
    q.put((os.getpid(), digest(store)))


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_multiprocessing_workers(small, method):
    store = featstore.open(small[0])
    want = digest(store)
    keep = store["db/seq1/0001.jpg"]            # a live snapshot in the parent
    ctx = mp.get_context(method)
    q = ctx.Queue()
    procs = [ctx.Process(target=_child_digest, args=(store, q)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert {g[1] for g in got} == {want}
    assert digest(store) == want and keep.keypoints.shape == (300, 2)


def _pool_digest(args):
    store, name = args
    r = store[name]
    return name, hashlib.sha256(r.descriptors.tobytes()).hexdigest()


def test_pool_map_spawn(small):
    store = featstore.open(small[0])
    with mp.get_context("spawn").Pool(2) as pool:
        got = dict(pool.map(_pool_digest, [(store, n) for n in NAMES]))
    for n in NAMES:
        assert got[n] == hashlib.sha256(store[n].descriptors.tobytes()).hexdigest()


class _Pairs:
    """A map-style dataset holding a Store (pickled into spawn workers)."""

    def __init__(self, store, names):
        self.store, self.names = store, names

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        import torch
        r = self.store[self.names[i]]
        return torch.from_numpy(r.descriptors.astype(np.float32)).sum()


def test_torch_multiprocessing_and_dataloader(small):
    torch = pytest.importorskip("torch")
    import torch.multiprocessing as tmp
    store = featstore.open(small[0])
    want = digest(store)
    ctx = tmp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child_digest, args=(store, q))
    p.start()
    assert q.get(timeout=120)[1] == want
    p.join(60)
    assert p.exitcode == 0

    names = sorted(NAMES)
    for mc in ("fork", "spawn"):
        dl = torch.utils.data.DataLoader(_Pairs(store, names), num_workers=2,
                                         batch_size=None, multiprocessing_context=mc)
        got = [float(x) for x in dl]
        exp = [float(store[n].descriptors.astype(np.float32).sum()) for n in names]
        np.testing.assert_allclose(got, exp, rtol=1e-5)


def test_os_fork_child_keeps_using_store(small):
    store = featstore.open(small[0])
    want = digest(store)
    keep = store["db/seq1/0001.jpg"]
    kept = keep.descriptors.copy()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            ok = digest(store) == want and store._nsnapshots == 0
            ok = ok and store["q2.jpg"].keypoints.shape == (1, 2)
            store.close()
            os.write(w, b"ok" if ok else b"bad")
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    msg = os.read(r, 16)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert status == 0 and msg == b"ok"
    # the parent's snapshot and later lookups are untouched by the child
    np.testing.assert_array_equal(keep.descriptors, kept)
    assert digest(store) == want
    del keep
    gc.collect()
    assert store._nsnapshots == 0


def test_64_processes_at_once(small):
    path = small[0]
    want = digest(featstore.open(path))
    gc.collect()
    pids = []
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    for i in range(64):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                os.close(go_w)
                os.read(go_r, 1)                 # all start together
                s = featstore.open(path)
                d = digest(s)
                os.write(w, b"1" if d == want else b"0")
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(w)
    os.close(go_r)
    os.write(go_w, b"x" * 64)
    os.close(go_w)
    got = b""
    while len(got) < 64:
        chunk = os.read(r, 64)
        if not chunk:
            break
        got += chunk
    os.close(r)
    codes = [os.waitpid(p, 0)[1] for p in pids]
    assert codes == [0] * 64 and got == b"1" * 64


def test_read_while_appending(tmp_path):
    first = {f"a/{i:03d}.jpg": 200 for i in range(40)}
    second = {f"b/{i:03d}.jpg": 2000 for i in range(300)}     # grows the file
    write_h5(tmp_path / "f1.h5", first, seed=1)
    write_h5(tmp_path / "f2.h5", second, seed=2)
    path = tmp_path / "db.fst"
    cli("import", tmp_path / "f1.h5", path, "--quiet")
    store = featstore.open(path)
    store.snapshot_s = 0
    want = {n: store[n].descriptors.copy() for n in first}
    stop = threading.Event()
    errors, reads = [], [0]

    def reader():
        try:
            while not stop.is_set():
                for n, d in want.items():
                    np.testing.assert_array_equal(store[n].descriptors, d)
                    reads[0] += 1
                store.get("b/299.jpg")
        except Exception as e:          # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    cli("import", "--append", tmp_path / "f2.h5", path, "--quiet")
    deadline = time.time() + 30
    while "b/299.jpg" not in store and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    stop.set()
    t.join()
    assert not errors, errors
    assert reads[0] > 0
    assert len(store) == 340
    with h5py.File(tmp_path / "f2.h5", "r") as f:
        np.testing.assert_array_equal(store["b/299.jpg"].descriptors,
                                      f["b/299.jpg/descriptors"][()].T)


def test_append_grows_file_while_arrays_held(tmp_path):
    # The new records lie past this process's map: remapping must wait for
    # the arrays of the old snapshot. Held by this very thread, they never
    # go: the lookup fails at once (not after fst_reader_begin's 30 s), and
    # works as soon as they are released.
    write_h5(tmp_path / "f1.h5", {"a/0": 10}, seed=1)
    write_h5(tmp_path / "f2.h5", {f"b/{i}": 4000 for i in range(200)}, seed=2)
    path = tmp_path / "db.fst"
    cli("import", tmp_path / "f1.h5", path, "--quiet")
    store = featstore.open(path)
    store.snapshot_s = 0
    keep = store["a/0"].descriptors
    maplen = store._map_range()[1]
    cli("import", "--append", tmp_path / "f2.h5", path, "--quiet")
    assert path.stat().st_size > maplen
    t = time.monotonic()
    with pytest.raises(featstore.Error, match="grew") as e:
        store["b/199"]
    assert time.monotonic() - t < 5
    assert str(path) in str(e.value)
    assert keep.shape == (10, D)            # still readable
    del keep
    gc.collect()
    assert store["b/199"].descriptors.shape == (4000, D)


# ---- match and hloc ----

def test_match_same_as_cli(synth):
    d = synth
    cli("match", d / "db.fst", d / "pairs.txt", "-o", d / "cli.h5", "--workers",
        "2", "--preset", "NN-ratio", "--quiet")
    summary = featstore.match(featstore.open(d / "db.fst"), d / "pairs.txt",
                              d / "py.h5", preset="NN-ratio", workers=2)
    assert summary["status"] == "ok" and summary["pairs"] == 30
    assert summary["workers"] == 2 and summary["matches"] > 0
    assert h5_content(d / "py.h5") == h5_content(d / "cli.h5")
    # options map to the command's flags
    s2 = featstore.match(d / "db.fst", d / "pairs.txt", d / "py2.h5",
                         workers=1, mutual=False, ratio_threshold=0.9)
    cli("match", d / "db.fst", d / "pairs.txt", "-o", d / "cli2.h5", "--workers",
        "1", "--no-mutual", "--ratio-threshold", "0.9", "--quiet")
    assert s2["pairs"] == 30
    assert h5_content(d / "py2.h5") == h5_content(d / "cli2.h5")


def test_match_failure_raises(synth, tmp_path):
    (tmp_path / "p.txt").write_text("synth/img0000.jpg nothere.jpg\n")
    with pytest.raises(featstore.MatchError) as e:
        featstore.match(synth / "db.fst", tmp_path / "p.txt", tmp_path / "m.h5",
                        workers=1)
    assert "nothere.jpg" in str(e.value)
    with pytest.raises(featstore.Error, match="neural"):
        featstore.match(synth / "db.fst", tmp_path / "p.txt", tmp_path / "m.h5",
                        weights="superpoint_lightglue.pth")


@pytest.mark.parametrize("conf", ["NN-mutual", "NN-ratio", "NN-superpoint"])
def test_hloc_match_features_same_as_cli(synth, tmp_path, conf):
    from featstore.hloc import match_features
    feats = tmp_path / "feats.h5"
    feats.write_bytes((synth / "f.h5").read_bytes())
    out = match_features(match_features.confs[conf], synth / "pairs.txt",
                         feats, matches=tmp_path / "m.h5")
    assert out == tmp_path / "m.h5"
    assert (tmp_path / "feats.h5.fst").exists()
    cli("match", synth / "db.fst", synth / "pairs.txt", "-o", tmp_path / "cli.h5",
        "--preset", conf, "--quiet")
    assert h5_content(out) == h5_content(tmp_path / "cli.h5")


def test_hloc_names_store_reuse_and_reimport(synth, tmp_path):
    from featstore.hloc import match_features
    import featstore.hloc
    assert featstore.hloc.match_features is match_features
    conf = match_features.confs["NN-mutual"]
    (tmp_path / "feats-x.h5").write_bytes((synth / "f.h5").read_bytes())
    out = match_features.main(conf, synth / "pairs.txt", "feats-x",
                              export_dir=tmp_path)
    assert out == tmp_path / "feats-x_matches-NN-mutual_pairs.h5"
    assert out.exists()
    store = tmp_path / "feats-x.h5.fst"
    ino = store.stat().st_ino
    match_features.main(conf, synth / "pairs.txt", "feats-x",
                        export_dir=tmp_path, overwrite=True)
    assert store.stat().st_ino == ino                  # reused
    # the features change: the store is imported again
    write_h5(tmp_path / "feats-x.h5", {"synth/img0000.jpg": 10}, seed=9)
    os.utime(tmp_path / "feats-x.h5", (time.time() + 5, time.time() + 5))
    with pytest.raises(featstore.MatchError):   # pairs name missing images
        match_features.main(conf, synth / "pairs.txt", "feats-x",
                            export_dir=tmp_path, overwrite=True)
    assert store.stat().st_ino != ino
    assert featstore.open(store).names() == ["synth/img0000.jpg"]


def test_hloc_neural_conf_is_a_clear_error(synth, tmp_path):
    from featstore.hloc import match_features
    for name in ("superpoint+lightglue", "superglue", "disk+lightglue"):
        with pytest.raises(featstore.Error, match=name.replace("+", r"\+")):
            match_features(match_features.confs[name], synth / "pairs.txt",
                           synth / "f.h5", matches=tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()
    with pytest.raises(ValueError, match="both features and matches"):
        match_features(match_features.confs["NN-mutual"], synth / "pairs.txt",
                       synth / "f.h5")
