#!/usr/bin/env bash
# tests/trust/valgrind.sh : valgrind memcheck on the end-to-end commands
# (suite 'slow'): synth, import, import --append, info, verify, export, and
# a match: the coordinator and its worker process (--trace-children; run
# by vgmatch, see vgmatch.c).
# Any memcheck error or definite/indirect leak fails (--error-exitcode).
#
# valgrind cannot run a sanitized binary: when $FEATSTORE is built with
# ASan, a plain build of this tree is made first in $FST_VG_BUILD (default:
# <build>/tests/trust/plain; about two minutes the first time; shared with
# trust.py's match_ulimit, hence the lock).
set -u
: "${FEATSTORE:?}" "${FST_SRCDIR:?}"
command -v valgrind >/dev/null || { echo "valgrind not installed: skipped"; exit 77; }
HERE=$(cd "$(dirname "$0")" && pwd)
F=$FEATSTORE
VGM=${FST_VGMATCH:-}
if ldd "$F" | grep -q libasan; then
    B=${FST_VG_BUILD:-$(dirname "$(dirname "$F")")/tests/trust/plain}
    mkdir -p "$(dirname "$B")"
    exec 9>"$B.lock"
    flock 9
    if [ ! -f "$B/build.ninja" ]; then
        meson setup "$B" "$FST_SRCDIR" -Dbuildtype=debugoptimized -Db_sanitize=none \
            -Dcuda=disabled >/dev/null || exit 1
    fi
    ninja -C "$B" -j2 tools/featstore tests/trust/vgmatch >/dev/null || exit 1
    flock -u 9
    F=$B/tools/featstore
    VGM=$B/tests/trust/vgmatch
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/fst-vg-XXXXXX")
trap 'rm -rf "$T"' EXIT
unset LD_PRELOAD
VG=(valgrind -q --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect
    --suppressions="$HERE/valgrind.supp" --trace-children=yes
    --child-silent-after-fork=yes --log-file="$T/vg.%p.log")
n=0
vg() {   # vg ARGS... : featstore ARGS under valgrind; fail on any report
    "${VG[@]}" "$F" "$@" >"$T/out" 2>"$T/err"
    local rc=$?
    if [ $rc -ne 0 ] || [ -s "$(ls -S "$T"/vg.*.log 2>/dev/null | head -1)" ]; then
        echo "FAIL (exit $rc): featstore $*"; cat "$T/err"; cat "$T"/vg.*.log 2>/dev/null
        exit 1
    fi
    rm -f "$T"/vg.*.log
    n=$((n + 1))
}
vg synth "$T/a.h5" --images 12 --keypoints 96 --dim 32 --pairs "$T/p.txt" --npairs 20 --quiet
vg synth "$T/b.h5" --images 4 --keypoints 50 --dim 32 --prefix b/img --quiet
vg import "$T/a.h5" "$T/db.fst" --quiet
vg import "$T/b.h5" "$T/db.fst" --append --quiet
vg info "$T/db.fst"
vg info "$T/db.fst" --json
vg verify "$T/db.fst" --quiet
vg export "$T/db.fst" "$T/x.h5" --quiet
# error paths too
"${VG[@]}" "$F" import "$T/p.txt" "$T/bad.fst" --quiet >/dev/null 2>&1
[ $? -eq 99 ] && { echo "FAIL: memcheck errors on a bad import"; cat "$T"/vg.*.log; exit 1; }
rm -f "$T"/vg.*.log; n=$((n + 1))
# a match: the coordinator (vgmatch) and its worker (a traced child)
vgm() {   # vgm PAIRS : vgmatch under valgrind; fail on any report
    "${VG[@]}" "$VGM" "$T/db.fst" "$1" "$T/m.h5" "$F" >"$T/out" 2>"$T/err"
    local rc=$?
    if [ $rc -ne 0 ] || [ -s "$(ls -S "$T"/vg.*.log 2>/dev/null | head -1)" ]; then
        echo "FAIL (exit $rc): vgmatch $1"; cat "$T/out" "$T/err"; cat "$T"/vg.*.log 2>/dev/null
        exit 1
    fi
    rm -f "$T"/vg.*.log
    n=$((n + 1))
}
if [ -n "$VGM" ] && [ -x "$VGM" ]; then
    vgm "$T/p.txt"
    # ...and one that extends that output (reads it; some pairs are in it)
    awk '{ print $1; print $2 }' "$T/p.txt" | sort -u >"$T/names"
    first=$(head -1 "$T/names")
    tail -n +2 "$T/names" | sed "s|^|$first |" >"$T/p2.txt"
    vgm "$T/p2.txt"
else
    echo "vgmatch not built: the match is not checked"
fi
echo "valgrind memcheck: $n end-to-end commands clean (no error, no definite or indirect leak)"
