"""hloc's matching step on featstore: change one import line.

    from hloc import match_features            # before
    from featstore.hloc import match_features  # after

    conf = match_features.confs["NN-mutual"]
    matches = match_features.main(conf, pairs, features="feats-disk",
                                  export_dir=outputs)
    # or: featstore.hloc.match_features(conf, pairs, features, matches=...)

See featstore.hloc.match_features for what is served.
"""
from . import match_features

__all__ = ["match_features"]
