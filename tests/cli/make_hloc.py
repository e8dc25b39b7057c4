#!/usr/bin/env python3
"""make_hloc.py OUT.h5 [--half] : write a small features.h5 exactly as hloc's
extract_features does (h5py, libver="latest", a group per image named by its
path, keypoints/descriptors/scores/image_size, the keypoints' `uncertainty`
attribute; --half = hloc's as_half: float32 arrays stored as float16), with
the variations hloc's extractors produce: keypoint_scores instead of scores,
no scores, images with no keypoints, deep names. --dog: as hloc's DoG (SIFT)
extractor, each image also has `scales` (N,) (multiplied by the resize
scale's mean, as extract_features does) and `oris` (N,) (radians), float32,
or float16 with --half."""
import sys

import h5py
import numpy as np

out = sys.argv[1]
half = "--half" in sys.argv
dog = "--dog" in sys.argv
rng = np.random.default_rng(7)
D = 64


def image(n, scores="scores", size=True, unc=True, noise=1):
    pred = {
        "keypoints": (rng.random((n, 2)) * [1023, 767]).astype(np.float32),
        "descriptors": rng.standard_normal((D, n)).astype(np.float32),
    }
    pred["descriptors"] /= np.maximum(np.linalg.norm(pred["descriptors"], axis=0), 1e-6)
    if scores:
        pred[scores] = rng.random(n).astype(np.float32)
    if size:
        pred["image_size"] = np.array([1024, 768])            # int64, as hloc
    # hloc: uncertainty = getattr(model, "detection_noise", 1) * scales.mean()
    # with float32 scales: float64 under NumPy 1.x, float32 under NumPy 2.
    scales = (np.array([1024, 768]) / np.array([640, 480])).astype(np.float32)
    if dog:
        pred["scales"] = (1.6 + rng.random(n) * 20).astype(np.float32) * scales.mean()
        pred["oris"] = ((rng.random(n) * 2 - 1) * np.pi).astype(np.float32)
    return pred, (noise * scales.mean() if unc else None)


images = {
    "db/seq1/0001.jpg": image(300),
    "db/seq1/0002.jpg": image(0),                               # (D, 0)
    "db/seq2/frame 10.png": image(120, scores="keypoint_scores"),
    "query/night/q1.jpg": image(57, scores=None),
    "query/q2.jpg": image(1, size=False, unc=False),
    "query/q3.jpg": image(9, noise=np.float32(2.0)),           # float32 attr
}
with h5py.File(out, "w", libver="latest") as fd:
    for name, (pred, uncertainty) in images.items():
        if half:
            for k in pred:
                if pred[k].dtype == np.float32:
                    pred[k] = pred[k].astype(np.float16)
        grp = fd.create_group(name)
        for k, v in pred.items():
            grp.create_dataset(k, data=v)
        if uncertainty is not None:
            grp["keypoints"].attrs["uncertainty"] = uncertainty
print(len(images))
