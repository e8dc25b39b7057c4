"""hloc's `match_features` (hloc/match_features.py), run by featstore.

`main(conf, pairs, features, export_dir=None, matches=None,
features_ref=None, overwrite=False)` has hloc's signature, takes hloc's conf
dicts (`confs` below is hloc's table), finds its files as hloc does, writes
hloc's matches.h5 where hloc would, and returns its path. The module itself
is callable: `featstore.hloc.match_features(conf, pairs, features, ...)` is
`main(...)`.

The features file is imported into a store beside it, `<features>.fst`, the
first time, and that store is reused after; it is imported again when the
features file changed (its size or modification time differs from what the
store recorded). Matching runs `featstore match` (worker processes, one per
CPU unless `workers=`; `device=` as on the command line).

Served: the nearest-neighbour confs `NN-mutual`, `NN-ratio`,
`NN-superpoint`, and any conf whose model is `nearest_neighbor` (its
`do_mutual_check`, `ratio_threshold`, `distance_threshold` are honoured).
Neural matchers (`superpoint+lightglue`, `disk+lightglue`,
`aliked+lightglue`, `superglue`, `superglue-fast`, `adalam`) are not served
yet: they raise featstore.Error naming the conf; run hloc's own
match_features for those.
"""
import os
import subprocess
import sys
import types
from pathlib import Path

from .. import Error, featstore_binary, match as _match, open as _open

# hloc's table, as in hloc/match_features.py.
confs = {
    "superpoint+lightglue": {
        "output": "matches-superpoint-lightglue",
        "model": {"name": "lightglue", "features": "superpoint"},
    },
    "disk+lightglue": {
        "output": "matches-disk-lightglue",
        "model": {"name": "lightglue", "features": "disk"},
    },
    "aliked+lightglue": {
        "output": "matches-aliked-lightglue",
        "model": {"name": "lightglue", "features": "aliked"},
    },
    "superglue": {
        "output": "matches-superglue",
        "model": {"name": "superglue", "weights": "outdoor",
                  "sinkhorn_iterations": 50},
    },
    "superglue-fast": {
        "output": "matches-superglue-it5",
        "model": {"name": "superglue", "weights": "outdoor",
                  "sinkhorn_iterations": 5},
    },
    "NN-superpoint": {
        "output": "matches-NN-mutual-dist.7",
        "model": {"name": "nearest_neighbor", "do_mutual_check": True,
                  "distance_threshold": 0.7},
    },
    "NN-ratio": {
        "output": "matches-NN-mutual-ratio.8",
        "model": {"name": "nearest_neighbor", "do_mutual_check": True,
                  "ratio_threshold": 0.8},
    },
    "NN-mutual": {
        "output": "matches-NN-mutual",
        "model": {"name": "nearest_neighbor", "do_mutual_check": True},
    },
    "adalam": {
        "output": "matches-adalam",
        "model": {"name": "adalam"},
    },
}


def _conf_name(conf):
    for k, v in confs.items():
        if v == conf:
            return k
    return conf.get("output", repr(conf))


def _nn_options(conf):
    """featstore match options for an NN conf; Error for any other."""
    model = conf.get("model", {})
    if model.get("name") != "nearest_neighbor":
        raise Error(f"featstore.hloc: conf '{_conf_name(conf)}' (model "
                    f"'{model.get('name')}') is not served by featstore yet: "
                    "only nearest_neighbor confs (NN-mutual, NN-ratio, "
                    "NN-superpoint) are; use hloc's match_features for it")
    unknown = set(model) - {"name", "do_mutual_check", "ratio_threshold",
                            "distance_threshold"}
    if unknown:
        raise Error(f"featstore.hloc: conf '{_conf_name(conf)}': model "
                    f"options {sorted(unknown)} are not supported")
    return {
        "mutual": bool(model.get("do_mutual_check", True)),
        "ratio_threshold": model.get("ratio_threshold") or 0,
        "distance_threshold": model.get("distance_threshold") or 0,
    }


def store_for(features):
    """The store beside `features` (`<features>.fst`), imported now if it is
    missing or older than the features file. Returns its path."""
    features = Path(features)
    dest = Path(str(features) + ".fst")
    st = os.stat(features)
    if dest.exists():
        try:
            with _open(dest) as s:
                src = s._meta()
            if (src["source_size"] == st.st_size
                    and src["source_mtime"] == int(st.st_mtime)):
                return dest
        except Error:
            pass                       # damaged or foreign: import again
    tmp = Path(f"{dest}.new-{os.getpid()}")
    for p in (tmp, Path(f"{tmp}-lock")):
        if p.exists():
            p.unlink()
    proc = subprocess.run([featstore_binary(), "import", str(features),
                           str(tmp), "--quiet"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode != 0:
        raise Error(proc.stderr.strip() or
                    f"featstore import {features}: exit {proc.returncode}")
    # Processes that have the old store open keep its inode; new opens
    # take the new file with a new lock file.
    lock = Path(f"{dest}-lock")
    if lock.exists():
        lock.unlink()
    os.replace(tmp, dest)
    tmplock = Path(f"{tmp}-lock")
    if tmplock.exists():
        tmplock.unlink()
    return dest


def main(conf, pairs, features, export_dir=None, matches=None,
         features_ref=None, overwrite=False, workers=None, device=None):
    """hloc's match_features.main, on featstore. Returns the matches path."""
    pairs = Path(pairs)
    if isinstance(features, Path) or Path(features).exists():
        features_q = Path(features)
        if matches is None:
            raise ValueError("Either provide both features and matches as "
                             "Path or both as names.")
    else:
        if export_dir is None:
            raise ValueError("Provide an export_dir if features is not a "
                             f"file path: {features}.")
        features_q = Path(export_dir, features + ".h5")
        if matches is None:
            matches = Path(export_dir,
                           f'{features}_{conf["output"]}_{pairs.stem}.h5')
    matches = Path(matches)
    if features_ref is None:
        features_ref = features_q
    options = _nn_options(conf)
    features_ref = Path(features_ref)
    if not features_q.exists():
        raise FileNotFoundError(f"Query feature file {features_q}.")
    if not features_ref.exists():
        raise FileNotFoundError(f"Reference feature file {features_ref}.")
    assert pairs.exists(), pairs
    matches.parent.mkdir(exist_ok=True, parents=True)
    store = store_for(features_ref)
    if features_q.resolve() != features_ref.resolve():
        options["query"] = str(store_for(features_q))
    _match(store, pairs, matches, workers=workers, device=device,
           overwrite=overwrite, **options)
    return matches


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return main(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
