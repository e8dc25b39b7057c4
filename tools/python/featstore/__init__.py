"""featstore from Python: open a store zero-copy, run `featstore match`.

    import featstore
    store = featstore.open("db.fst")
    rec = store["db/img1.jpg"]
    rec.keypoints      # (N, 2) float32, read-only, points into the store's map
    rec.descriptors    # (N, D) float16 or float32 as stored, read-only, no copy

Lifetimes. An array keeps its read snapshot, and through it the open store
and its map, alive: arrays may outlive `rec` and `store`, and `store.close()`
while arrays exist is allowed: lookups stop at once, the map is released
when the last array from it is gone (the unmap is deferred, never early).

Snapshots. Lookups share the current read snapshot while arrays from it
live and it is younger than `store.snapshot_s` seconds (1 s); otherwise
they take a fresh one, which sees appends (`featstore import --append`). Arrays pin
their snapshot's pages: hold them for as long as you use them, not for
hours. When an append has grown the store file past this process's map,
the map must move, which it cannot while arrays of this store's older
snapshots live: the lookup raises featstore.Error at once, and works again
once they are released. (Arrays of another Store object on the same file
in this process make it wait up to 30 s, then raise.)

PyTorch. `torch.from_numpy(rec.descriptors)` shares the memory without a
copy; PyTorch warns that it does not support non-writable tensors (writing
to one is undefined behaviour: here it is a segmentation fault, the map is
read-only). Take `rec.descriptors.copy()` or `torch.tensor(...)` for a
writable copy, or `.float()` on the tensor, which copies while converting.

Processes. A Store pickles as its path: pass it to multiprocessing (spawn
or fork), torch.multiprocessing or DataLoader workers and it reopens there.
After os.fork() the child can keep using a store opened in the parent: the
module notices the new pid, leaves the parent's LMDB state alone and reopens
the store on first use. (Arrays inherited through fork() stay readable, but
only the parent's snapshot pins their pages: drop them in the child.)

Errors are featstore.Error subclasses whose message is the CLI's:
NotFoundError (also a KeyError) for a missing image, CorruptError for a
damaged or truncated store or record, FormatError for a file that is not a
(complete) store, VersionError for a store of a newer featstore.
"""
import json as _json
import os as _os
import shutil as _shutil
import subprocess as _subprocess

from . import _featstore
from ._featstore import (Error, NotFoundError, CorruptError, FormatError,
                         VersionError)

__all__ = ["open", "Store", "Record", "match", "Error", "NotFoundError",
           "CorruptError", "FormatError", "VersionError", "MatchError",
           "featstore_binary"]


class MatchError(Error):
    """`featstore match` failed; `.summary` is its --json summary (or None),
    `.returncode` its exit status."""

    def __init__(self, message, summary=None, returncode=None):
        super().__init__(message)
        self.summary = summary
        self.returncode = returncode


class Record:
    """One image: arrays pointing into the store's map (read-only).

    name         the image's name as in the features.h5
    keypoints    (N, 2) float32
    descriptors  (N, D) float16 or float32, as stored (hloc stores D x N:
                 featstore transposed them once, at import)
    scores       (N,) float32, or None if the source had none
    image_size   (width, height), or None
    uncertainty  the keypoints' `uncertainty` attribute, or None
    scales       (N,) float32: each keypoint's scale, as hloc's DoG (SIFT)
                 extractor wrote it; None if the source had none
    oris         (N,) float32: each keypoint's orientation (radians), or None
    """
    __slots__ = ("name", "keypoints", "descriptors", "scores", "image_size",
                 "uncertainty", "flags", "scales", "oris")

    def __init__(self, name, keypoints, descriptors, scores, image_size,
                 uncertainty, flags, scales=None, oris=None):
        self.name = name
        self.keypoints = keypoints
        self.descriptors = descriptors
        self.scores = scores
        self.image_size = image_size
        self.uncertainty = uncertainty
        self.flags = flags
        self.scales = scales
        self.oris = oris

    def __len__(self):
        return self.keypoints.shape[0]

    def __repr__(self):
        return (f"<featstore.Record {self.name!r}: {len(self)} keypoints, "
                f"{self.descriptors.shape[1]}-D {self.descriptors.dtype}>")


def _reopen(path, checksums):
    return Store(path, checksums=checksums)


class Store(_featstore.Store):
    """A featstore store opened read-only: `featstore.open(path)`.

    len(store), name in store, store.names(), iter(store), store[name],
    store.get(name, default), store.info(), store.close(), `with` blocks.
    `checksums=True` verifies each record's XXH3 checksum on every lookup.
    Any number of processes may open one store; a store pickles as its path.
    """

    def __getitem__(self, name):
        return Record(*self._get(name))

    def get(self, name, default=None):
        try:
            return self[name]
        except NotFoundError:
            return default

    def __contains__(self, name):
        if not isinstance(name, (str, bytes)):
            return False
        try:
            self._get(name)
        except NotFoundError:
            return False
        return True

    def __len__(self):
        return self._meta()["images"]

    def __iter__(self):
        return iter(self.names())

    def keys(self):
        return self.names()

    def info(self):
        """What `featstore info --json` prints, as a dict."""
        m = self._meta()
        per_image = self._counts()
        counts = sorted(n for n, _, _ in per_image)
        try:
            file_bytes = _os.stat(self.path).st_size
        except OSError:
            file_bytes = 0
        return {
            "store": self.path,
            "format_version": m["format_version"],
            "featstore_version": m["featstore_version"],
            "d": m["d"], "dtype": m["dtype"], "images": m["images"],
            "keypoints": m["keypoints"], "payload_bytes": m["payload_bytes"],
            "file_bytes": file_bytes,
            "keypoints_per_image": {
                "min": counts[0] if counts else 0,
                "median": counts[len(counts) // 2] if counts else 0,
                "max": counts[-1] if counts else 0},
            "images_with_scales": sum(sca for _, sca, _ in per_image),
            "images_with_oris": sum(ori for _, _, ori in per_image),
            "source": {"name": m["source_name"], "size": m["source_size"],
                       "mtime": m["source_mtime"]},
            "created": m["created"], "modified": m["modified"],
            "store_id": m["store_id"], "generation": m["generation"],
            "identity": m["identity"], "lock_file": m["lock_file"],
        }

    def __reduce__(self):
        return (_reopen, (self.path, self.checksums))

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return f"<featstore.Store {self.path!r} ({state})>"


def open(path, checksums=False):
    """Open the store at `path` read-only (milliseconds, whatever its size).
    Raises featstore.Error subclasses (FormatError, VersionError,
    CorruptError; Error for a missing or unreadable file)."""
    return Store(_os.fspath(path), checksums=checksums)


# ---- running the featstore command ----

def featstore_binary():
    """The `featstore` program this module runs: $FEATSTORE, else the one
    beside this module in a build tree, else the installed one, else PATH."""
    env = _os.environ.get("FEATSTORE")
    if env:
        return env
    here = _os.path.dirname(_os.path.abspath(__file__))
    cands = [_os.path.join(here, "..", "..", "featstore")]   # build tree
    try:
        from . import _config
        cands.append(_os.path.join(_config.BINDIR, "featstore"))
    except ImportError:
        pass
    for c in cands:
        if _os.path.isfile(c) and _os.access(c, _os.X_OK):
            return _os.path.normpath(c)
    found = _shutil.which("featstore")
    if found:
        return found
    raise Error("featstore: the featstore program was not found (set "
                "$FEATSTORE, or install featstore)")


def _option_args(options):
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            if key == "mutual" and value is False:
                args.append("--no-mutual")
            continue
        if value is True:
            args.append(flag)
        elif key == "backend_params" and isinstance(value, dict):
            args += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        else:
            args += [flag, str(value)]
    return args


def match(store, pairs, output, preset=None, workers=None, device=None,
          weights=None, **options):
    """Run `featstore match` (worker processes, journal, resume) and return
    its --json summary as a dict.

    store    a Store or a store's path; pairs: hloc's pairs file; output:
             the matches.h5 to write. preset: 'NN-mutual', 'NN-ratio',
             'NN-superpoint'. workers, device ('cpu', 'cuda', 'cuda:0,1',
             'auto'): as on the command line. Other options are the
             command's long options with '_' for '-': mutual=False,
             ratio_threshold=0.8, query='q.h5', overwrite=True, threads=2,
             batch=64, skip_missing=True, matches_dtype='int32',
             backend_params={'sim_mb': 256}, workers_per_device=2...
    weights  for neural matchers; none is served yet (a clear error).
    Raises MatchError (message = the command's error, `.summary` = its
    summary) when the run fails or some pairs failed.
    """
    if weights is not None:
        raise Error(f"featstore.match: weights={weights!r}: no neural "
                    "matcher is served yet (only the NN presets)")
    path = store.path if isinstance(store, _featstore.Store) else _os.fspath(store)
    cmd = [featstore_binary(), "match", path, _os.fspath(pairs), "-o",
           _os.fspath(output), "--json", "--quiet"]
    if preset is not None:
        cmd += ["--preset", preset]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if device is not None:
        cmd += ["--device", str(device)]
    cmd += _option_args(options)
    proc = _subprocess.run(cmd, stdout=_subprocess.PIPE, stderr=_subprocess.PIPE,
                           text=True)
    summary = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                summary = _json.loads(line)
            except ValueError:
                pass
            break
    if proc.returncode != 0 or summary is None:
        msg = (summary or {}).get("error") if summary else None
        if not msg:
            err = proc.stderr.strip().splitlines()
            msg = err[-1] if err else f"exit status {proc.returncode}"
        if summary and summary.get("failures"):
            f = summary["failures"][0]
            msg = (f"{msg}; {len(summary['failures'])} pair(s) failed, first "
                   f"{f['name0']} {f['name1']}: {f['detail']}")
        raise MatchError(f"featstore match: {msg}", summary, proc.returncode)
    return summary
