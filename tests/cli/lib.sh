# tests/cli/lib.sh : shared by the CLI end-to-end scripts (sourced).
# Needs FEATSTORE (the binary) and PYTHON (python3 with h5py and numpy).
set -u
: "${FEATSTORE:?set FEATSTORE to the featstore binary}"
PYTHON=${PYTHON:-/usr/bin/python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T=$(mktemp -d "${TMPDIR:-/tmp}/fst-cli-XXXXXX")
cleanup() { [ -n "${FST_TEST_KEEP:-}" ] || rm -rf "$T"; }
trap cleanup EXIT

NCHECK=0
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { NCHECK=$((NCHECK + 1)); }

# run EXPECTED_STATUS CMD... : run, keep stdout in $T/out and stderr in
# $T/err, and check the exit status.
run() {
    local want=$1; shift
    "$@" >"$T/out" 2>"$T/err"
    local got=$?
    if [ "$got" != "$want" ]; then
        echo "--- stdout:" >&2; cat "$T/out" >&2
        echo "--- stderr:" >&2; cat "$T/err" >&2
        fail "exit $got, expected $want: $*"
    fi
    ok
}

# has FILE TEXT : FILE contains TEXT (fixed string).
has() {
    grep -qF -- "$2" "$1" || { echo "--- $1:" >&2; cat "$1" >&2; fail "$1 lacks '$2'"; }
    ok
}
hasnt() {
    ! grep -qF -- "$2" "$1" || { echo "--- $1:" >&2; cat "$1" >&2; fail "$1 has '$2'"; }
    ok
}
absent() { [ ! -e "$1" ] || fail "$1 exists"; ok; }
present() { [ -e "$1" ] || fail "$1 missing"; ok; }

# json_get FILE EXPR : evaluate python EXPR on the JSON object `d` in FILE.
json_get() { "$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

done_ok() { echo "ok: $NCHECK checks"; exit 0; }
