#!/bin/bash
# A full disk gives a clean error, never a crash: CREATE writes through a
# shared map into a sparse file, where a page the file system cannot back
# would be SIGBUS; the writer reserves blocks first (fallocate) and fails
# with "disk or map full". An APPEND that runs out of space leaves the store
# as it was. Runs in a user and mount namespace on a small tmpfs; skipped
# (77) where those are not allowed.
if [ -z "${FST_IN_NS:-}" ]; then
    unshare -rm true 2>/dev/null || { echo "SKIP: no user/mount namespaces"; exit 77; }
    FST_IN_NS=1 exec unshare -rm bash "$0" "$@"
fi
source "$(dirname "$0")/lib.sh"

mkdir -p "$T/mnt"
trap 'umount "$T/mnt" 2>/dev/null; cleanup' EXIT
mount -t tmpfs -o size=8m tmpfs "$T/mnt" 2>/dev/null || { echo "SKIP: cannot mount tmpfs"; exit 77; }
run 0 "$FEATSTORE" synth "$T/big.h5" --images 40 --keypoints 1024 --dim 256 -q
run 0 "$FEATSTORE" synth "$T/small.h5" --images 4 --keypoints 256 --dim 256 --prefix small/img -q

# create: 21 MB into 8 MB
run 1 "$FEATSTORE" import "$T/big.h5" "$T/mnt/s.fst"
has "$T/err" "disk or map full"
has "$T/err" "No space left on device"
absent "$T/mnt/s.fst"
compgen -G "$T/mnt/s.fst.tmp-*" >/dev/null && fail "temporary file left: $(ls "$T/mnt")"; ok

# append: a small store fits, the big append does not; the store is intact
run 0 "$FEATSTORE" import "$T/small.h5" "$T/mnt/s.fst" -q
run 1 "$FEATSTORE" import "$T/big.h5" "$T/mnt/s.fst" --append
hasnt "$T/err" "Bus error"     # an error from the writer (LMDB's EIO on a short write)
run 0 "$FEATSTORE" verify "$T/mnt/s.fst"
has "$T/out" "4 records checked, all good"
done_ok
