#!/usr/bin/python3
"""Reference outputs of LightGlue and SuperGlue for tests/test_neural.c.

    /usr/bin/python3 tests/neural/make_reference.py LIGHTGLUE_GIT SUPERGLUE_GIT [--out DIR]
                     [--only CASE...] [--bench N...]

LIGHTGLUE_GIT and SUPERGLUE_GIT are clones (bare or not) of cvg/LightGlue and
magicleap/SuperGluePretrainedNetwork. Their forward passes are run as they
are (lightglue/lightglue.py, models/superglue.py, read with `git show` into a
temporary directory, never committed), in Debian's PyTorch 1.13, which lacks
torch.amp.custom_fwd: an identity decorator stands in for it (it only casts
CUDA inputs).

No weights or inputs are stored. Every tensor is drawn from splitmix64 seeded
by (seed XOR fnv1a64(name)), uniform in [-1, 1), scaled per tensor by rules
that test_neural.c repeats (draw() below); a case file lists the tensor names
and shapes, the rules, the input seeds and the reference outputs:
matches0, matching_scores0 and, per keypoint, the margins between the best
and second best log-assignment score in its row and in its best column (the
places where float32 rounding may legitimately pick another match).

--bench N... instead times the reference per pair at N keypoints (1 thread)
and prints one line per model: benchmarks/bench_neural.c calls it.
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

torch.set_num_threads(1)

M64 = (1 << 64) - 1


def fnv1a64(s):
    h = 0xcbf29ce484222325
    for c in s.encode():
        h ^= c
        h = (h * 0x100000001b3) & M64
    return h


def uniform(seed, n):
    """n draws in [0, 1): splitmix64 outputs' top 24 bits / 2^24 (float64)."""
    with np.errstate(over='ignore'):
        k = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(seed) + k * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) * 2.0 ** -24


def sym(seed, tag, n):
    return 2.0 * uniform(seed ^ fnv1a64(tag), n) - 1.0


def draw(name, shape, seed, rules):
    """float32 tensor for `name`: scale * U[-1, 1) + offset, then the rules
    (substring, mult, add) in order; all in float64, rounded once."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = sym(seed, name, n)
    leaf = name.rsplit('.', 1)[-1]
    if name == 'bin_score':
        v = np.ones(n)
    elif leaf == 'weight' and len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        v = u * math.sqrt(3.0 / fan_in)
    elif leaf == 'weight':             # layer / batch norm
        v = 1.0 + 0.1 * u
    elif leaf == 'running_var':
        v = 1.0 + 0.5 * u
    else:                              # bias, running_mean
        v = 0.1 * u
    for sub, mult, add in rules:
        if sub in name:
            v = v * mult + add
    return v.astype(np.float32).reshape(shape)


def git_show(repo, path):
    return subprocess.run(['git', '--git-dir', repo if repo.endswith('.git') or
                           os.path.exists(os.path.join(repo, 'HEAD')) else
                           os.path.join(repo, '.git'), 'show', 'HEAD:' + path],
                          check=True, capture_output=True).stdout


def load_modules(lg_git, sg_git, tmp):
    with open(os.path.join(tmp, 'ref_lightglue.py'), 'wb') as f:
        f.write(git_show(lg_git, 'lightglue/lightglue.py'))
    with open(os.path.join(tmp, 'ref_superglue.py'), 'wb') as f:
        f.write(git_show(sg_git, 'models/superglue.py'))
    if not hasattr(torch.amp, 'custom_fwd'):
        torch.amp.custom_fwd = lambda **kw: (lambda fn: fn)
    sys.path.insert(0, tmp)
    import ref_lightglue
    import ref_superglue
    return ref_lightglue, ref_superglue


# ----------------------------------------------------------------- cases

LG_SCALED = [('final_proj.weight', 3.0, 0.0), ('matchability.bias', 1.0, 2.0)]
# adaptive: confident tokens (early stop after a few layers) and a
# matchability spread wide enough that some points are pruned
LG_ADAPT = LG_SCALED + [('token.0.bias', 1.0, 1.9),
                        ('token_confidence.0.token.0.bias', 1.0, 0.5),
                        ('log_assignment.0.matchability.bias', 1.0, -9.0)]
# SuperGlue's random weights already give many confident matches (about 40%
# of the keypoints); scaling its projections makes float32 itself diverge
# (PyTorch's own float32 and float64 runs differ by 0.2 in the scores).
SG_SCALED = []

LG_OFF = dict(depth=-1.0, width=-1.0)
LG_ON = dict(depth=0.95, width=0.99)

CASES = {
    # name: model, variant, rules, n0, n1, dtype, size, extra
    'lg_random':     ('lightglue', 'superpoint', [], 256, 240, 'f32', True, LG_OFF),
    'lg_scaled':     ('lightglue', 'superpoint', LG_SCALED, 256, 240, 'f32', True, LG_OFF),
    'lg_adapt':      ('lightglue', 'superpoint', LG_ADAPT, 256, 240, 'f32', True, LG_ON),
    'lg_adapt_f16':  ('lightglue', 'superpoint', LG_ADAPT, 240, 256, 'f16', True, LG_ON),
    'lg_f16':        ('lightglue', 'superpoint', LG_SCALED, 200, 220, 'f16', True, LG_OFF),
    'lg_unequal':    ('lightglue', 'superpoint', LG_ADAPT, 300, 12, 'f32', True, LG_ON),
    'lg_one':        ('lightglue', 'superpoint', LG_SCALED, 1, 60, 'f32', True, LG_ON),
    'lg_one_b':      ('lightglue', 'superpoint', LG_SCALED, 60, 1, 'f32', True, LG_OFF),
    'lg_zero':       ('lightglue', 'superpoint', LG_SCALED, 0, 40, 'f32', True, LG_ON),
    'lg_nosize':     ('lightglue', 'superpoint', LG_SCALED, 150, 160, 'f32', False, LG_OFF),
    'lg_sift':       ('lightglue', 'sift', LG_ADAPT, 200, 180, 'f32', True, LG_ON),
    'sg_random':     ('superglue', 'outdoor', [], 200, 190, 'f32', True, dict(iters=100)),
    'sg_hloc':       ('superglue', 'outdoor', SG_SCALED, 180, 200, 'f16', True, dict(iters=50)),
    'sg_fast':       ('superglue', 'outdoor', SG_SCALED, 210, 200, 'f32', True, dict(iters=5)),
    'sg_unequal':    ('superglue', 'outdoor', SG_SCALED, 300, 10, 'f32', True, dict(iters=50)),
    'sg_one':        ('superglue', 'outdoor', SG_SCALED, 1, 40, 'f32', True, dict(iters=50)),
    'sg_zero':       ('superglue', 'outdoor', SG_SCALED, 30, 0, 'f32', True, dict(iters=50)),
}

WSEED = 0x5EED0001
ISEED = 0x1A9E0002


def make_inputs(seed, n0, n1, dim, dtype, size, scale_ori, shared=0.6):
    """Keypoints, scores, descriptors of two images; the first
    shared * min(n0, n1) of image 1 are noisy copies of image 0's."""
    W, H = 640.0, 480.0
    ds = math.sqrt(3.0 / dim)
    out = []
    for k, n in enumerate((n0, n1)):
        kp = np.stack([uniform(seed ^ fnv1a64('kx%d' % k), n) * W,
                       uniform(seed ^ fnv1a64('ky%d' % k), n) * H], -1)
        sc = uniform(seed ^ fnv1a64('sc%d' % k), n)
        de = sym(seed, 'de%d' % k, n * dim).reshape(n, dim) * ds
        out.append([kp.astype(np.float32), sc.astype(np.float32), de.astype(np.float32)])
    ns = int(shared * min(n0, n1))
    if ns:
        kp0, _, de0 = out[0]
        nk = sym(seed, 'nk', ns * 2).reshape(ns, 2) * 2.0
        nd = sym(seed, 'nd', ns * dim).reshape(ns, dim) * (0.3 * ds)
        out[1][0][:ns] = (kp0[:ns].astype(np.float64) + nk).astype(np.float32)
        out[1][2][:ns] = (de0[:ns].astype(np.float64) + nd).astype(np.float32)
    for k, n in enumerate((n0, n1)):
        if dtype == 'f16':
            out[k][2] = out[k][2].astype(np.float16).astype(np.float32)
        if scale_ori:
            out[k].append((1.0 + 4.0 * uniform(seed ^ fnv1a64('ss%d' % k), n)).astype(np.float32))
            out[k].append((sym(seed, 'so%d' % k, n) * math.pi).astype(np.float32))
    return out, (W, H)


def margins(scores):
    """Per row: best - second best over the inner block; the same for the
    column of the row's best. inf where there is no second."""
    s = scores[0, :-1, :-1].double().numpy()
    m, n = s.shape
    if m == 0 or n == 0:
        return np.zeros(m), np.zeros(m)
    rs = np.sort(s, 1)
    rowm = rs[:, -1] - rs[:, -2] if n > 1 else np.full(m, np.inf)
    cs = np.sort(s, 0)
    colm = cs[-1] - cs[-2] if m > 1 else np.full(n, np.inf)
    return rowm, colm[s.argmax(1)]


def build_lightglue(mod, variant, rules):
    conf = dict(flash=False)
    if variant == 'sift':
        conf.update(input_dim=128, add_scale_ori=True)
    model = mod.LightGlue(features=None, **conf).eval()
    tensors = [(k, tuple(v.shape)) for k, v in model.state_dict().items()
               if k != 'confidence_thresholds']
    sd = {k: torch.from_numpy(draw(k, s, WSEED, rules)) for k, s in tensors}
    model.load_state_dict(sd, strict=False)
    return model, tensors


def build_superglue(mod, rules):
    orig_load, orig_lsd = torch.load, torch.nn.Module.load_state_dict
    torch.load = lambda *a, **k: {}
    torch.nn.Module.load_state_dict = lambda self, *a, **k: None
    try:
        model = mod.SuperGlue({'weights': 'outdoor'})
    finally:
        torch.load, torch.nn.Module.load_state_dict = orig_load, orig_lsd
    model.eval()
    tensors = [(k, tuple(v.shape)) for k, v in model.state_dict().items()
               if v.dtype == torch.float32]
    sd = model.state_dict()
    for k, s in tensors:
        sd[k] = torch.from_numpy(draw(k, s, WSEED, rules))
    model.load_state_dict(sd)
    return model, tensors


def run_case(name, lgm, sgm, outdir):
    model_kind, variant, rules, n0, n1, dtype, has_size, extra = CASES[name]
    captured = {}
    if model_kind == 'lightglue':
        model, tensors = build_lightglue(lgm, variant, rules)
        dim = 128 if variant == 'sift' else 256
        imgs, (W, H) = make_inputs(ISEED, n0, n1, dim, dtype, has_size, variant == 'sift')
        model.conf.depth_confidence = extra['depth']
        model.conf.width_confidence = extra['width']
        orig = lgm.filter_matches

        def spy(scores, th):
            captured['scores'] = scores.detach().clone()
            return orig(scores, th)
        lgm.filter_matches = spy
        data = {}
        for k in range(2):
            d = {'keypoints': torch.from_numpy(imgs[k][0])[None],
                 'descriptors': torch.from_numpy(imgs[k][2])[None]}
            if has_size:
                d['image_size'] = torch.tensor([[W, H]], dtype=torch.float32)
            if variant == 'sift':
                d['scales'] = torch.from_numpy(imgs[k][3])[None]
                d['oris'] = torch.from_numpy(imgs[k][4])[None]
            data['image%d' % k] = d
        with torch.no_grad():
            pred = model(data)
        lgm.filter_matches = orig
        kept = None
        if 'prune0' in pred and extra['width'] > 0 and n0:
            p0 = pred['prune0'][0].numpy()
            kept = np.nonzero(p0 == p0.max())[0]
        stop = int(pred['stop'])
    else:
        model, tensors = build_superglue(sgm, rules)
        model.config['sinkhorn_iterations'] = extra['iters']
        imgs, (W, H) = make_inputs(ISEED, n0, n1, 256, dtype, has_size, False)
        orig = sgm.log_optimal_transport

        def spy(scores, alpha, iters):
            z = orig(scores, alpha, iters)
            captured['scores'] = z.detach().clone()
            return z
        sgm.log_optimal_transport = spy
        data = {}
        for k in range(2):
            data['keypoints%d' % k] = torch.from_numpy(imgs[k][0])[None]
            data['scores%d' % k] = torch.from_numpy(imgs[k][1])[None]
            data['descriptors%d' % k] = torch.from_numpy(imgs[k][2]).T.contiguous()[None]
            data['image%d' % k] = torch.empty(1, 1, int(H), int(W))
        with torch.no_grad():
            pred = model(data)
        sgm.log_optimal_transport = orig
        kept, stop = None, 0
    m0 = pred['matches0'][0].numpy().astype(np.int64)
    s0 = pred['matching_scores0'][0].numpy().astype(np.float64)
    rowm = np.full(n0, np.inf)
    colm = np.full(n0, np.inf)
    if 'scores' in captured:
        r, c = margins(captured['scores'])
        idx = kept if kept is not None else np.arange(n0)
        rowm[idx] = r
        colm[idx] = c
    path = os.path.join(outdir, name + '.txt')
    with open(path, 'w') as f:
        f.write('# made by tests/neural/make_reference.py (PyTorch %s); do not edit\n'
                % torch.__version__)
        f.write('model %s\nwseed %d\niseed %d\n' % (model_kind, WSEED, ISEED))
        for sub, mult, add in rules:
            f.write('rule %s %r %r\n' % (sub, mult, add))
        f.write('n0 %d\nn1 %d\ndtype %s\nsize %d\nscale_ori %d\n'
                % (n0, n1, dtype, int(has_size), int(variant == 'sift')))
        if model_kind == 'lightglue':
            f.write('depth %r\nwidth %r\nfilter 0.1\n' % (extra['depth'], extra['width']))
        else:
            f.write('sinkhorn %d\nmatch_threshold 0.2\n' % extra['iters'])
        for k, s in tensors:
            f.write('tensor %s %d %s\n' % (k, len(s), ' '.join(str(x) for x in s)))
        nmatch = int((m0 >= 0).sum())
        f.write('# stop %d, kept %s, matches %d of %d\n'
                % (stop, 'all' if kept is None else len(kept), nmatch, n0))
        f.write('outputs %d\n' % n0)
        for i in range(n0):
            f.write('%d %d %.9g %.6g %.6g\n' % (i, m0[i], s0[i], rowm[i], colm[i]))
    return nmatch, stop, kept


def bench(lgm, sgm, sizes, reps=3):
    for n in sizes:
        for label, kind, extra in (('lightglue-adaptive-off', 'lightglue', LG_OFF),
                                   ('lightglue-adaptive-on', 'lightglue', LG_ON),
                                   ('superglue-50', 'superglue', dict(iters=50)),
                                   ('superglue-5', 'superglue', dict(iters=5))):
            if kind == 'lightglue':
                model, _ = build_lightglue(lgm, 'superpoint', LG_SCALED)
                model.conf.depth_confidence = extra['depth']
                model.conf.width_confidence = extra['width']
            else:
                model, _ = build_superglue(sgm, SG_SCALED)
                model.config['sinkhorn_iterations'] = extra['iters']
            imgs, (W, H) = make_inputs(ISEED, n, n, 256, 'f32', True, False)
            if kind == 'lightglue':
                data = {'image%d' % k: {'keypoints': torch.from_numpy(imgs[k][0])[None],
                                        'descriptors': torch.from_numpy(imgs[k][2])[None],
                                        'image_size': torch.tensor([[W, H]])}
                        for k in range(2)}
            else:
                data = {}
                for k in range(2):
                    data['keypoints%d' % k] = torch.from_numpy(imgs[k][0])[None]
                    data['scores%d' % k] = torch.from_numpy(imgs[k][1])[None]
                    data['descriptors%d' % k] = torch.from_numpy(imgs[k][2]).T.contiguous()[None]
                    data['image%d' % k] = torch.empty(1, 1, int(H), int(W))
            ts = []
            with torch.no_grad():
                for _ in range(reps):
                    t0 = time.thread_time()
                    model(data)
                    ts.append(time.thread_time() - t0)
            print('torch %s %d %.6f' % (label, n, sorted(ts)[len(ts) // 2]), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('lightglue_git')
    ap.add_argument('superglue_git')
    ap.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  'data'))
    ap.add_argument('--only', nargs='*')
    ap.add_argument('--bench', nargs='*', type=int)
    ap.add_argument('--reps', type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lgm, sgm = load_modules(a.lightglue_git, a.superglue_git, tmp)
        if a.bench:
            bench(lgm, sgm, a.bench, a.reps)
            return
        os.makedirs(a.out, exist_ok=True)
        for name in a.only or CASES:
            nm, stop, kept = run_case(name, lgm, sgm, a.out)
            print('%-14s matches %4d  stop %d  kept %s' %
                  (name, nm, stop, 'all' if kept is None else len(kept)))


if __name__ == '__main__':
    main()
