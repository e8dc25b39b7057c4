#!/bin/bash
# kill -9 an import midway: no store at the destination (or, for --append,
# the store as it was); the same command run again finishes the job; verify
# is clean; no temporary file is left.
source "$(dirname "$0")/lib.sh"

IMAGES=${FST_CRASH_IMAGES:-400}
run 0 "$FEATSTORE" synth "$T/f.h5" --images "$IMAGES" --keypoints 1024 --dim 128 -q
run 0 "$FEATSTORE" synth "$T/g.h5" --images "$IMAGES" --keypoints 1024 --dim 128 \
    --prefix more/img -q

# kill_midway SRC STORE [ARGS...] : start the import and kill -9 it once its
# file has grown by 32 MB -- the temporary file when creating (written
# through LMDB's map, which sizes the file to the map: it runs ahead of the
# data, so the kill may come before the first committed batch; the C test
# kill9_during_create kills after several), the store when appending (its
# first batch of 64 MB being written). Returns 0 if the process died by the
# signal, 1 if it had already finished.
kill_midway() {
    local src=$1 dest=$2; shift 2
    local before=0
    [ -e "$dest" ] && before=$(stat -c %s "$dest")
    "$FEATSTORE" import "$src" "$dest" --quiet "$@" >/dev/null 2>"$T/kill.err" &
    local pid=$! f size
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$*" = "--append" ]; then f=$dest; else f="$dest.tmp-$pid"; fi
        size=$(stat -c %s "$f" 2>/dev/null || echo 0)
        [ "$size" -gt $((before + 32 * 1024 * 1024)) ] && break
        sleep 0.002
    done
    kill -9 "$pid" 2>/dev/null
    wait "$pid"
    local st=$?
    [ "$st" = 137 ] && return 0
    [ "$st" = 0 ] && return 1
    cat "$T/kill.err" >&2
    fail "import exited $st before the kill"
}

# create
killed=0
for attempt in 1 2 3; do
    rm -rf "$T/s.fst" "$T/s.fst-lock"
    if kill_midway "$T/f.h5" "$T/s.fst"; then killed=1; break; fi
done
[ "$killed" = 1 ] || fail "import always finished before kill -9 (make FST_CRASH_IMAGES larger)"; ok
absent "$T/s.fst"
run 1 "$FEATSTORE" info "$T/s.fst"
run 1 "$FEATSTORE" verify "$T/s.fst"
run 0 "$FEATSTORE" import "$T/f.h5" "$T/s.fst"
has "$T/out" "$IMAGES images added, 0 skipped"
run 0 "$FEATSTORE" verify "$T/s.fst"
has "$T/out" "$IMAGES records checked, all good"
run 0 "$FEATSTORE" info --json "$T/s.fst"
[ "$("$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["images"])' <"$T/out")" = "$IMAGES" ] \
    || fail "record count"; ok
compgen -G "$T/s.fst.tmp-*" >/dev/null && fail "temporary file left: $(ls "$T")"; ok

# append: the store stays as it was, then the append completes
killed=0
for attempt in 1 2 3; do
    if kill_midway "$T/g.h5" "$T/s.fst" --append; then killed=1; break; fi
    # finished before the kill: start again from the one-file store
    rm -rf "$T/s.fst" "$T/s.fst-lock"
    run 0 "$FEATSTORE" import "$T/f.h5" "$T/s.fst" -q
done
[ "$killed" = 1 ] || fail "append always finished before kill -9"; ok
run 0 "$FEATSTORE" verify "$T/s.fst"
has "$T/out" "$IMAGES records checked, all good"
run 0 "$FEATSTORE" import "$T/g.h5" "$T/s.fst" --append
has "$T/out" "$IMAGES images added, 0 skipped"
run 0 "$FEATSTORE" verify "$T/s.fst"
has "$T/out" "$((2 * IMAGES)) records checked, all good"
done_ok
