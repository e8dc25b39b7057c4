#!/usr/bin/python3
"""tests/weights/cli_weights.py : `featstore weights FILE [--json]` on the files of
tests/weights/data/ (make_weights.py wrote them with torch; manifest.txt says what
each holds). Needs $FEATSTORE and $FST_SRCDIR (meson's test_env); no torch.

Cases: every good file's --json listing equals the manifest (names, dtypes, shapes,
order, parameter count) and its text listing names every tensor; every refused file
exits 1 with one message naming the file and what was refused, and nothing its
payload would do happened; --lightglue-names renames; usage errors exit 2.
A sanitizer report in any command's stderr fails the case."""
import glob
import json
import os
import subprocess
import sys

F = os.environ['FEATSTORE']
DATA = os.path.join(os.environ.get('FST_SRCDIR', '.'), 'tests', 'weights', 'data')


def manifest():
    files, refuse, rename, cur = {}, [], [], None
    for line in open(os.path.join(DATA, 'manifest.txt')):
        p = line.split()
        if not p or p[0].startswith('#'):
            continue
        if p[0] == 'file':
            cur = files[p[1]] = {'format': p[2], 'tensors': []}
        elif p[0] == 'tensor':
            nd = int(p[3])
            cur['tensors'].append((p[1], p[2], [int(x) for x in p[4:4 + nd]]))
        elif p[0] == 'refuse':
            refuse.append((p[1], p[2], ' '.join(p[3:])))
        elif p[0] == 'rename':
            rename.append((p[1], p[2], p[3]))
    return files, refuse, rename


def run(*args):
    r = subprocess.run([F, 'weights', *args], capture_output=True, text=True)
    for bad in ('Sanitizer', 'runtime error:', 'LeakSanitizer'):
        assert bad not in r.stderr, r.stderr
    return r


def case_listings(files, refuse, rename):
    for name, m in files.items():
        r = run('--json', os.path.join(DATA, name))
        assert r.returncode == 0, (name, r.stderr)
        j = json.loads(r.stdout)
        assert j['format'] == m['format'], (name, j['format'])
        assert j['tensors'] == len(m['tensors'])
        got = [(e['name'], e['dtype'], e['shape']) for e in j['entries']]
        assert got == m['tensors'], (name, got, m['tensors'])
        params = 0
        for _, _, shape in m['tensors']:
            n = 1
            for s in shape:
                n *= s
            params += n
        assert j['parameters'] == params, (name, j['parameters'], params)
        r = run(os.path.join(DATA, name))
        assert r.returncode == 0, (name, r.stderr)
        lines = r.stdout.splitlines()
        assert lines[1].split() == ['format', m['format']], lines[:3]
        assert lines[2].split() == ['tensors', str(len(m['tensors']))], lines[:3]
        for (tname, dtype, shape), line in zip(m['tensors'], lines[4:]):
            assert line.split()[:2] == [tname, dtype], (line, tname)
            assert line.endswith('[' + ', '.join(map(str, shape)) + ']'), (line, shape)


def case_refused(files, refuse, rename):
    for p in glob.glob('/tmp/featstore-pwned-*'):
        os.unlink(p)
    for name, status, msg in refuse:
        r = run(os.path.join(DATA, name))
        assert r.returncode == 1, (name, r.returncode, r.stdout, r.stderr)
        assert r.stdout == '', (name, r.stdout)
        err = r.stderr.strip()
        assert '\n' not in err and err.startswith('featstore weights: '), (name, err)
        assert name in err and msg in err, (name, msg, err)
    assert glob.glob('/tmp/featstore-pwned-*') == [], 'a payload ran'


def case_lightglue_names(files, refuse, rename):
    r = run('--json', '--lightglue-names', os.path.join(DATA, 'lightglue_old.pth'))
    assert r.returncode == 0, r.stderr
    names = [e['name'] for e in json.loads(r.stdout)['entries']]
    want = [new for f, old, new in rename if f == 'lightglue_old.pth']
    assert names == want, (names, want)


def case_usage(files, refuse, rename):
    for args in ([], ['a', 'b'], ['--bogus', 'x']):
        r = run(*args)
        assert r.returncode == 2 and 'usage: featstore weights' in r.stderr, (args, r.stderr)
    r = run('--help')
    assert r.returncode == 0 and 'torch-legacy' in r.stdout
    r = run('/nonexistent.pth')
    assert r.returncode == 1 and '/nonexistent.pth: No such file' in r.stderr, r.stderr
    r = subprocess.run([F, '--help'], capture_output=True, text=True)
    assert 'weights' in r.stdout, r.stdout


def case_control_characters(files, refuse, rename):
    """A name holding a newline stays on its line in text, escaped in JSON."""
    import struct
    import tempfile
    h = json.dumps({'a\nb': {'dtype': 'U8', 'shape': [1], 'data_offsets': [0, 1]}}).encode()
    with tempfile.NamedTemporaryFile(suffix='.safetensors') as f:
        f.write(struct.pack('<Q', len(h)) + h + b'\x07')
        f.flush()
        r = run(f.name)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 5 and lines[4].split()[:2] == ['a?b', 'uint8'], lines
        r = run('--json', f.name)
        assert json.loads(r.stdout)['entries'][0]['name'] == 'a\nb', r.stdout


CASES = {'listings': case_listings, 'refused': case_refused,
         'lightglue_names': case_lightglue_names, 'usage': case_usage,
         'control_characters': case_control_characters}

if __name__ == '__main__':
    m = manifest()
    names = sys.argv[1:] or list(CASES)
    print('1..%d' % len(names))
    failed = 0
    for i, n in enumerate(names, 1):
        try:
            CASES[n](*m)
            print('ok %d %s' % (i, n))
        except Exception as e:   # noqa: BLE001 - report and go on
            import traceback
            failed += 1
            for line in traceback.format_exc().splitlines():
                print('#', line)
            print('not ok %d %s' % (i, n))
    sys.exit(1 if failed else 0)
