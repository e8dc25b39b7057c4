#!/bin/bash
# Submit a sharded featstore match run: an array job of N shards, then the
# merge job, which runs when every shard has succeeded.
#
#   tools/slurm/submit.sh N STORE PAIRS.txt MATCHES.h5 [match options...]
#
# Parts and their journals go to MATCHES.h5.parts/. Extra sbatch options for
# the array job (partition, CPUs, GPUs, time) come from $FST_SBATCH_ARRAY,
# for the merge job from $FST_SBATCH_MERGE. Prints the two job ids.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 N STORE PAIRS.txt MATCHES.h5 [match options...]" >&2
    exit 2
fi
n=$1 store=$2 pairs=$3 out=$4
shift 4
here=$(cd "$(dirname "$0")" && pwd)
parts="$out.parts"
mkdir -p "$parts"
# shellcheck disable=SC2086
array=$(sbatch --parsable --array="0-$((n - 1))" ${FST_SBATCH_ARRAY:-} \
        "$here/match-array.sbatch" "$n" "$store" "$pairs" "$parts" "$@")
array=${array%%;*}
# shellcheck disable=SC2086
merge=$(sbatch --parsable --dependency="afterok:$array" ${FST_SBATCH_MERGE:-} \
        "$here/merge.sbatch" "$n" "$parts" "$out")
merge=${merge%%;*}
echo "array job $array ($n shards, parts in $parts), merge job $merge -> $out"
