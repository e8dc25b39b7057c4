#!/usr/bin/python3
"""tests/weights/make_weights.py [OUTDIR] : the weight files test_weights.c reads.

Run once with Debian's python3-torch (1.13) and commit what it writes
(default: tests/weights/data/), so that the tests need no torch:

  /usr/bin/python3 tests/weights/make_weights.py

Writes
  sd.pth              torch.save(sd)                      (zip, pickle protocol 2)
  sd_p4.pth           torch.save(sd, pickle_protocol=4)   (zip, STACK_GLOBAL, MEMOIZE, FRAME)
  sd_legacy.pth       torch.save(sd, _use_new_zipfile_serialization=False)
  sd_legacy_p4.pth    the same with pickle_protocol=4
  sd_legacy_py2.pth   sd_legacy.pth with its strings as Python 2 wrote them (SHORT_BINSTRING)
  sd_cuda.pth         sd.pth naming torch.cuda.FloatStorage at cuda:0, as GPU-saved files do
  sd_byteorder.pth    sd.pth plus torch >= 2.1's <archive>/byteorder ('little')
  sd_zip64.pth        sd.pth's entries in a zip64 archive written here (every size and
                      offset in zip64 fields, zip64 end records), checked with torch.load
  sd.safetensors      sd written here per the safetensors spec (the package is absent)
  lightglue_old.pth   old LightGlue key names (self_attn.N, cross_attn.N), zip
  params.pth          nn.Parameter objects (torch._utils._rebuild_parameter), legacy
  sd_deflate.pth      sd.pth re-zipped with deflate (must be refused: compressed)
  big_endian*.pth     byteorder 'big', sys_info little_endian False (refused)
  complex.pth         a complex64 tensor (its storage type is not allowed: refused)
  wrapped.pth         a checkpoint {'model': state_dict, 'epoch': 3} (refused, as the
                      reference loaders would fail on it)
  expand_huge.pth     a 1-element storage viewed as 2^28 elements (stride 0): refused
  evil_*.pth          pickles that would run code (refused; nothing may run)
  manifest.txt        what the tests compare with:
      file NAME FORMAT NTENSORS
      tensor NAME DTYPE NDIM DIM... HEXBYTES     (contiguous row-major bytes)
      rename FILE OLD NEW                        (fst_weights_rename_lightglue)
      refuse FILE STATUS SUBSTRING...            (open fails with STATUS, detail has it)

Every payload of the evil files would create /tmp/featstore-pwned-<name>; the tests
check that no such file exists.
"""
import collections
import io
import json
import os
import pickle
import struct
import sys
import zipfile
import zlib

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, 'data')
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(11)
manifest = []

DT = {torch.float32: 'float32', torch.float16: 'float16', torch.bfloat16: 'bfloat16',
      torch.float64: 'float64', torch.int64: 'int64', torch.int32: 'int32',
      torch.int16: 'int16', torch.int8: 'int8', torch.uint8: 'uint8', torch.bool: 'bool'}
ST = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16', torch.float64: 'F64',
      torch.int64: 'I64', torch.int32: 'I32', torch.int16: 'I16', torch.int8: 'I8',
      torch.uint8: 'U8', torch.bool: 'BOOL'}


def tbytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:          # numpy has no bfloat16
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def record(fname, fmt, sd):
    manifest.append('file %s %s %d' % (fname, fmt, len(sd)))
    for k, t in sd.items():
        manifest.append('tensor %s %s %d %s %s' % (
            k, DT[t.dtype], t.dim(), ' '.join(str(s) for s in t.shape), tbytes(t).hex() or '-'))


def path(name):
    return os.path.join(OUT, name)


# ---- the state dict: a module's (OrderedDict with _metadata), plus odd tensors ----

class Enc(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 1), torch.nn.BatchNorm1d(4),
                                           torch.nn.ReLU(), torch.nn.Conv1d(4, 5, 1))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.kenc = Enc()
        self.norm = torch.nn.LayerNorm(6)
        self.final_proj = torch.nn.Linear(6, 3)
        self.register_buffer('bin_score', torch.tensor(1.5))


net = Net()
with torch.no_grad():
    net.kenc.encoder[1].running_mean.uniform_()
    net.kenc.encoder[1].running_var.uniform_(0.5, 2)
    net.kenc.encoder[1].num_batches_tracked += 7
sd = net.state_dict()                       # OrderedDict, _metadata, int64 scalar counter
base = torch.arange(24, dtype=torch.float32)
sd['view.base'] = base
sd['view.slice'] = base[5:17].view(3, 4)     # same storage, offset 5 (unaligned: copied)
sd['view.step'] = base[1::3]                 # stride 3
sd['view.t'] = torch.randn(4, 6).t()         # transposed: stride (1, 6)
sd['view.expand'] = torch.randn(1, 3).expand(4, 3)  # stride 0
sd['half'] = torch.randn(2, 3).half()
sd['bf16'] = torch.randn(5).bfloat16()
sd['f64'] = torch.randn(2, 2, dtype=torch.float64)
sd['i32'] = torch.tensor([-1, 2, 2 ** 31 - 1], dtype=torch.int32)
sd['i16'] = torch.tensor([[-3, 4]], dtype=torch.int16)
sd['i8'] = torch.tensor([-128, 127], dtype=torch.int8)
sd['u8'] = torch.tensor([0, 255, 7], dtype=torch.uint8)
sd['flags'] = torch.tensor([True, False, True])
sd['empty'] = torch.zeros(0, 3)
sd['deep.a.b.c.d.weight'] = torch.randn(1, 1, 1, 2, 1, 3)
sd['name with space'.replace(' ', '_')] = torch.ones(1)
assert isinstance(sd, collections.OrderedDict) and hasattr(sd, '_metadata')

torch.save(sd, path('sd.pth'))
record('sd.pth', 'torch-zip', sd)
torch.save(sd, path('sd_p4.pth'), pickle_protocol=4)
record('sd_p4.pth', 'torch-zip', sd)
torch.save(sd, path('sd_legacy.pth'), _use_new_zipfile_serialization=False)
record('sd_legacy.pth', 'torch-legacy', sd)
torch.save(sd, path('sd_legacy_p4.pth'), _use_new_zipfile_serialization=False,
           pickle_protocol=4)
record('sd_legacy_p4.pth', 'torch-legacy', sd)


def py2_strings(data):
    """The legacy file as Python 2's pickle wrote it: its five pickles with ASCII
    strings as SHORT_BINSTRING (py2 str) instead of BINUNICODE; storages unchanged."""
    import pickletools
    f, out = io.BytesIO(data), b''
    for _ in range(5):
        ops = [(op, arg, pos) for op, arg, pos in pickletools.genops(f)]
        ends = [pos for _, _, pos in ops[1:]] + [f.tell()]
        for (op, arg, pos), end in zip(ops, ends):
            if op.name == 'BINUNICODE' and arg.isascii() and len(arg) < 256:
                out += b'U' + bytes([len(arg)]) + arg.encode()
            else:
                out += data[pos:end]
    return out + data[f.tell():]


with open(path('sd_legacy_py2.pth'), 'wb') as f:
    f.write(py2_strings(open(path('sd_legacy.pth'), 'rb').read()))
assert b'U\x15kenc.encoder.0.weight' in open(path('sd_legacy_py2.pth'), 'rb').read()
record('sd_legacy_py2.pth', 'torch-legacy', sd)
for f in ['sd.pth', 'sd_p4.pth', 'sd_legacy.pth', 'sd_legacy_p4.pth', 'sd_legacy_py2.pth']:
    back = torch.load(path(f))
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd), f


# ---- zip64: the same entries, every size and offset in zip64 fields ----

def write_zip64(src, dst):
    entries = [(i.filename, zipfile.ZipFile(src).read(i.filename))
               for i in zipfile.ZipFile(src).infolist()]
    out = io.BytesIO()
    central = []
    for name, data in entries:
        nb = name.encode()
        off = out.tell()
        crc = zlib.crc32(data)
        z64 = struct.pack('<HHQQ', 1, 16, len(data), len(data))
        # pad with an unknown extra field so the data starts on 64 bytes
        start = off + 30 + len(nb) + len(z64)
        pad = (-(start + 4)) % 64
        extra = z64 + struct.pack('<HH', 0x4246, pad) + b'\0' * pad
        out.write(struct.pack('<IHHHHHIIIHH', 0x04034b50, 45, 0, 0, 0, 0x21, crc,
                              0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(extra)))
        out.write(nb + extra)
        assert out.tell() % 64 == 0
        out.write(data)
        central.append((nb, crc, len(data), off))
    cd_off = out.tell()
    for nb, crc, size, off in central:
        extra = struct.pack('<HHQQQ', 1, 24, size, size, off)
        out.write(struct.pack('<IHHHHHHIIIHHHHHII', 0x02014b50, 45, 45, 0, 0, 0, 0x21, crc,
                              0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(extra), 0, 0, 0, 0,
                              0xFFFFFFFF))
        out.write(nb + extra)
    cd_size = out.tell() - cd_off
    eocd64 = out.tell()
    out.write(struct.pack('<IQHHIIQQQQ', 0x06064b50, 44, 45, 45, 0, 0, len(central),
                          len(central), cd_size, cd_off))
    out.write(struct.pack('<IIQI', 0x07064b50, 0, eocd64, 1))
    out.write(struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                          0xFFFFFFFF, 0))
    with open(dst, 'wb') as f:
        f.write(out.getvalue())


write_zip64(path('sd.pth'), path('sd_zip64.pth'))
assert zipfile.ZipFile(path('sd_zip64.pth')).testzip() is None
back = torch.load(path('sd_zip64.pth'))
assert all(torch.equal(back[k], sd[k]) for k in sd)
record('sd_zip64.pth', 'torch-zip', sd)

with zipfile.ZipFile(path('sd.pth')) as zin, \
        zipfile.ZipFile(path('sd_deflate.pth'), 'w', zipfile.ZIP_DEFLATED) as zout:
    for i in zin.infolist():
        zout.writestr(i.filename, zin.read(i.filename))
manifest.append('refuse sd_deflate.pth EFORMAT is compressed (zip method 8)')


# storages saved from a GPU by old PyTorch: torch.cuda.FloatStorage, location cuda:0
def rewrite_pkl(src, dst, fn):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w', zipfile.ZIP_STORED) as zout:
        for i in zin.infolist():
            data = zin.read(i.filename)
            zout.writestr(i.filename, fn(data) if i.filename.endswith('/data.pkl') else data)


def to_cuda(pkl):
    out = pkl.replace(b'ctorch\nFloatStorage\n', b'ctorch.cuda\nFloatStorage\n')
    out = out.replace(b'X\x03\x00\x00\x00cpu', b'X\x06\x00\x00\x00cuda:0')
    assert out != pkl
    return out


rewrite_pkl(path('sd.pth'), path('sd_cuda.pth'), to_cuda)
record('sd_cuda.pth', 'torch-zip', sd)

# torch >= 2.1 adds <archive>/byteorder: 'little' is read, 'big' refused
def add_entry(src, dst, name, data):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w', zipfile.ZIP_STORED) as zout:
        for i in zin.infolist():
            zout.writestr(i.filename, zin.read(i.filename))
        zout.writestr(name, data)


add_entry(path('sd.pth'), path('sd_byteorder.pth'), 'sd/byteorder', 'little')
record('sd_byteorder.pth', 'torch-zip', sd)
add_entry(path('sd.pth'), path('big_endian.pth'), 'sd/byteorder', 'big')
manifest.append("refuse big_endian.pth EFORMAT a big-endian file (byteorder is not 'little')")
legacy = open(path('sd_legacy.pth'), 'rb').read()
big = legacy.replace(b'little_endianq\x02\x88', b'little_endianq\x02\x89', 1)
assert big != legacy
with open(path('big_endian_legacy.pth'), 'wb') as f:
    f.write(big)
manifest.append('refuse big_endian_legacy.pth EFORMAT written on a big-endian machine')
# a dtype the reader does not know: its storage type is not an allowed global
torch.save({'c': torch.zeros(2, dtype=torch.complex64)}, path('complex.pth'))
manifest.append('refuse complex.pth EFORMAT refusing global torch.ComplexFloatStorage')

# ---- safetensors, by hand ----

def write_safetensors(sd, dst, metadata=None):
    header, chunks, at = {}, [], 0
    if metadata:
        header['__metadata__'] = metadata
    for k, t in sd.items():
        b = tbytes(t)
        header[k] = {'dtype': ST[t.dtype], 'shape': list(t.shape),
                     'data_offsets': [at, at + len(b)]}
        chunks.append(b)
        at += len(b)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((-len(h)) % 8)
    with open(dst, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(chunks))


st_sd = collections.OrderedDict((k, v) for k, v in sd.items())
st_sd['unicode.\u00e9\u4e2d\U0001F600'] = torch.ones(2)
write_safetensors(st_sd, path('sd.safetensors'), {'format': 'pt', 'nested': '{"a": [1]}'})
record('sd.safetensors', 'safetensors', st_sd)


# ---- old LightGlue names ----

lg = collections.OrderedDict()
for i in range(3):
    lg['self_attn.%d.Wqkv.weight' % i] = torch.randn(6, 2)
    lg['self_attn.%d.ffn.0.bias' % i] = torch.randn(4)
    lg['cross_attn.%d.to_qk.weight' % i] = torch.randn(2, 2)
lg['log_assignment.0.matchability.weight'] = torch.randn(1, 2)
lg['posenc.Wr.weight'] = torch.randn(1, 2)
torch.save(lg, path('lightglue_old.pth'))
record('lightglue_old.pth', 'torch-zip', lg)
for k in lg:
    new = k
    for i in range(3):
        new = new.replace('self_attn.%d' % i, 'transformers.%d.self_attn' % i)
        new = new.replace('cross_attn.%d' % i, 'transformers.%d.cross_attn' % i)
    manifest.append('rename lightglue_old.pth %s %s' % (k, new))


# ---- parameters, legacy ----

params = collections.OrderedDict(w=torch.nn.Parameter(torch.randn(3, 2)),
                                 b=torch.nn.Parameter(torch.randn(2).half(),
                                                      requires_grad=False))
torch.save(params, path('params.pth'), _use_new_zipfile_serialization=False)
record('params.pth', 'torch-legacy', {k: v.detach() for k, v in params.items()})
assert b'_rebuild_parameter' in open(path('params.pth'), 'rb').read()

# a 1-element storage seen as 2^28 elements: torch.load makes a view; a contiguous
# copy would be 1 GB from a file of a few hundred bytes
torch.save({'huge': torch.zeros(1).expand(2 ** 28)}, path('expand_huge.pth'))
manifest.append('refuse expand_huge.pth EFORMAT copies of views exceed')


# ---- files that would run code ----

def pwned(tag):
    return '/tmp/featstore-pwned-' + tag


class System:
    """__reduce__ -> os.system(...): GLOBAL posix.system + REDUCE."""
    def __init__(self, tag):
        self.tag = tag

    def __reduce__(self):
        return (os.system, ('touch ' + pwned(self.tag),))


class Eval:
    def __init__(self, tag):
        self.tag = tag

    def __reduce__(self):
        return (eval, ("open(%r, 'w').close()" % pwned(self.tag),))


class Plain:
    """No __reduce__: pickled as GLOBAL __main__.Plain + NEWOBJ + BUILD."""
    def __init__(self):
        self.x = 1


def zip_pickle(dst, pkl):
    with zipfile.ZipFile(dst, 'w', zipfile.ZIP_STORED) as z:
        z.writestr('archive/data.pkl', pkl)
        z.writestr('archive/version', '3\n')


zip_pickle(path('evil_system.pth'), pickle.dumps(System('system'), protocol=2))
manifest.append('refuse evil_system.pth EFORMAT data.pkl: refusing global posix.system')
# a legacy-looking file whose first pickle is the payload
with open(path('evil_eval_legacy.pth'), 'wb') as f:
    f.write(pickle.dumps(Eval('eval'), protocol=2))
manifest.append('refuse evil_eval_legacy.pth EFORMAT legacy pickle 1 (magic number): '
                'refusing global __builtin__.eval')
with open(path('evil_eval_p4.pth'), 'wb') as f:
    f.write(pickle.dumps(Eval('eval4'), protocol=4))
manifest.append('refuse evil_eval_p4.pth EFORMAT refusing global builtins.eval')
# torch.save itself, of a state dict holding a __reduce__ object: zip and legacy
torch.save({'w': torch.ones(2), 'x': System('in-dict')}, path('evil_in_dict.pth'))
manifest.append('refuse evil_in_dict.pth EFORMAT refusing global posix.system')
torch.save({'w': torch.ones(2), 'x': System('in-dict-legacy')}, path('evil_in_dict_legacy.pth'),
           _use_new_zipfile_serialization=False)
manifest.append('refuse evil_in_dict_legacy.pth EFORMAT legacy pickle 4 (state_dict): '
                'refusing global posix.system')
torch.save({'w': torch.ones(2), 'obj': Plain()}, path('evil_object.pth'))
manifest.append('refuse evil_object.pth EFORMAT refusing global __main__.Plain')
# hand-written opcodes: INST, BUILD on a list, REDUCE of a storage type, NEWOBJ
evil_ops = {
    'evil_inst.pth': (b'\x80\x02(X\x1d\x00\x00\x00touch /tmp/featstore-pwned-iiios\nsystem\n.',
                      'refusing INST os.system'),
    'evil_build.pth': (b'\x80\x02]}b.', 'refusing BUILD on type list'),
    'evil_reduce_storage.pth': (b'\x80\x02ctorch\nFloatStorage\nK\x03\x85R.',
                                'refusing REDUCE of torch.FloatStorage'),
    'evil_newobj.pth': (b'\x80\x02ccollections\nOrderedDict\n)\x81.', 'refusing opcode NEWOBJ'),
    'evil_ext.pth': (b'\x80\x02\x82\x01.', 'refusing opcode EXT1'),
    'evil_module_pid.pth': (b'\x80\x02(X\x06\x00\x00\x00moduleN)tQ.',
                            "refusing persistent id 'module'"),
}
for name, (pkl, msg) in evil_ops.items():
    zip_pickle(path(name), pkl)
    manifest.append('refuse %s EFORMAT %s' % (name, msg))
# a training checkpoint: the state_dict inside a dict (not what the reference loads)
torch.save({'model': collections.OrderedDict(w=torch.ones(1)), 'epoch': 3}, path('wrapped.pth'))
manifest.append("refuse wrapped.pth EFORMAT entry 'model' is not a tensor but of type OrderedDict")

with open(path('manifest.txt'), 'w') as f:
    f.write('# written by tests/weights/make_weights.py (torch %s); do not edit\n'
            % torch.__version__)
    f.write('\n'.join(manifest) + '\n')
print('wrote %d files to %s' % (len(os.listdir(OUT)), OUT))
