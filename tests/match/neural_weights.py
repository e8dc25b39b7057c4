"""neural_weights.py : small random LightGlue / SuperGlue weight files for
the `neural` e2e case, written with numpy as safetensors (no torch).

The tensor names and shapes are the reference state_dicts' (cvg/LightGlue
lightglue.py, SuperGluePretrainedNetwork superglue.py, as listed in
tests/neural/data/*.txt) with fewer layers: the models infer their depth
from the tensors present. Values: uniform, scaled by fan-in like
tests/neural/make_reference.py's draw(), with its rules (final_proj x 3,
matchability bias + 2) so that random weights still make matches.
"""
import json
import math

import numpy as np


def lightglue_shapes(layers=2, input_dim=256, dim=256, scale_ori=False):
    s = {"posenc.Wr.weight": (32 * dim // 256, 4 if scale_ori else 2)}
    if input_dim != dim:
        s["input_proj.weight"] = (dim, input_dim)
        s["input_proj.bias"] = (dim,)
    for i in range(layers):
        for blk in ("self_attn", "cross_attn"):
            p = f"transformers.{i}.{blk}."
            if blk == "self_attn":
                s[p + "Wqkv.weight"] = (3 * dim, dim)
                s[p + "Wqkv.bias"] = (3 * dim,)
                s[p + "out_proj.weight"] = (dim, dim)
                s[p + "out_proj.bias"] = (dim,)
            else:
                for n in ("to_qk", "to_v", "to_out"):
                    s[p + n + ".weight"] = (dim, dim)
                    s[p + n + ".bias"] = (dim,)
            s[p + "ffn.0.weight"] = (2 * dim, 2 * dim)
            s[p + "ffn.0.bias"] = (2 * dim,)
            s[p + "ffn.1.weight"] = (2 * dim,)
            s[p + "ffn.1.bias"] = (2 * dim,)
            s[p + "ffn.3.weight"] = (dim, 2 * dim)
            s[p + "ffn.3.bias"] = (dim,)
    for i in range(layers):
        s[f"log_assignment.{i}.matchability.weight"] = (1, dim)
        s[f"log_assignment.{i}.matchability.bias"] = (1,)
        s[f"log_assignment.{i}.final_proj.weight"] = (dim, dim)
        s[f"log_assignment.{i}.final_proj.bias"] = (dim,)
    for i in range(layers - 1):
        s[f"token_confidence.{i}.token.0.weight"] = (1, dim)
        s[f"token_confidence.{i}.token.0.bias"] = (1,)
    return s


def superglue_shapes(layers=2, dim=256):
    s = {"bin_score": ()}
    chans = [3, 32, 64, 128, 256, dim]
    k = 0
    for c in range(len(chans) - 1):
        s[f"kenc.encoder.{k}.weight"] = (chans[c + 1], chans[c], 1)
        s[f"kenc.encoder.{k}.bias"] = (chans[c + 1],)
        if c < len(chans) - 2:
            for n in ("weight", "bias", "running_mean", "running_var"):
                s[f"kenc.encoder.{k + 1}.{n}"] = (chans[c + 1],)
        k += 3
    for i in range(layers):
        p = f"gnn.layers.{i}."
        for j in range(3):
            s[p + f"attn.proj.{j}.weight"] = (dim, dim, 1)
            s[p + f"attn.proj.{j}.bias"] = (dim,)
        s[p + "attn.merge.weight"] = (dim, dim, 1)
        s[p + "attn.merge.bias"] = (dim,)
        s[p + "mlp.0.weight"] = (2 * dim, 2 * dim, 1)
        s[p + "mlp.0.bias"] = (2 * dim,)
        for n in ("weight", "bias", "running_mean", "running_var"):
            s[p + f"mlp.1.{n}"] = (2 * dim,)
        s[p + "mlp.3.weight"] = (dim, 2 * dim, 1)
        s[p + "mlp.3.bias"] = (dim,)
    s["final_proj.weight"] = (dim, dim, 1)
    s["final_proj.bias"] = (dim,)
    return s


def draw(name, shape, rng):
    n = int(np.prod(shape)) if len(shape) else 1
    u = rng.uniform(-1.0, 1.0, n)
    leaf = name.rsplit(".", 1)[-1]
    if name == "bin_score":
        v = np.ones(n)
    elif leaf == "weight" and len(shape) >= 2:
        v = u * math.sqrt(3.0 / int(np.prod(shape[1:])))
    elif leaf == "weight":
        v = 1.0 + 0.1 * u
    elif leaf == "running_var":
        v = 1.0 + 0.5 * u
    else:
        v = 0.1 * u
    if "final_proj.weight" in name:
        v = v * 3.0
    if "matchability.bias" in name:
        v = v + 2.0
    return v.astype(np.float32).reshape(shape)


def write_safetensors(path, tensors):
    """tensors: {name: float32 array}, in order, packed (the format allows
    no holes)."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-(8 + len(h))) % 64)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def tensors(kind, seed=1, **kw):
    """{name: float32 array} of a `kind` model; the same for the same seed."""
    shapes = lightglue_shapes(**kw) if kind == "lightglue" else superglue_shapes(**kw)
    rng = np.random.default_rng(seed)
    return {k: draw(k, s, rng) for k, s in shapes.items()}


def write(path, kind, seed=1, **kw):
    write_safetensors(path, tensors(kind, seed, **kw))
    return path
