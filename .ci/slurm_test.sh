#!/usr/bin/env bash
# CI: the demo's fig2 and DINO's DVT stage 1 (two shard jobs) through
# `--profile profiles/slurm` on a real one-node SLURM cluster
# (.ci/slurm_cluster.sh), then .ci/slurm_check.py asserts from sacct where each
# job ran, that the two stage-1 shards (built in a pass of their own) ran at
# the same time, and that the outputs equal a local run's.
#
#   .ci/slurm_test.sh [LOCAL_RESULTS]
#   .ci/slurm_test.sh --keep WORKDIR
#
# LOCAL_RESULTS: results/demo of a local demo run; without it, the targets are
# first built locally. --keep: the cluster run and its sacct checks only, in
# WORKDIR (new or empty), whose repo/results/demo is left for a later
#   .ci/slurm_check.py --results WORKDIR/repo/results/demo --expected results/demo
# (.ci/run: the cluster run goes on beside the local demo). Every daemon is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=(fig2 results/demo/dvt/stage1/dino.npz)
keep=""
local_results=""
if [ "${1:-}" = "--keep" ]; then
  keep=${2:?--keep needs a directory}
elif [ -n "${1:-}" ]; then
  local_results=$(realpath "$1")
else
  snakemake --cores 2 "${TARGETS[@]}" --configfile config/demo.yaml --quiet
  local_results=$(realpath results/demo)
fi

command -v slurmctld >/dev/null || .ci/slurm_cluster.sh install
if [ -n "$keep" ]; then
  mkdir -p "$keep" && work=$(realpath "$keep")
else
  work=$(mktemp -d /tmp/vitlocal-slurm.XXXXXX)
fi
chmod 755 "$work"  # the munge and mysql users run daemons in there
trap '.ci/slurm_cluster.sh stop "$work/cluster"' EXIT
trap 'exit 143' TERM  # killed (.ci/run, when its demo fails): the EXIT trap still stops the daemons
.ci/slurm_cluster.sh start "$work/cluster"

# A copy of the working tree (tracked and new files), so the cluster run has
# results/, logs/ and .snakemake/ of its own.
mkdir "$work/repo"
comm -23 <(git ls-files -co --exclude-standard | sort) <(git ls-files -d | sort) \
  | tar -cf - -T - | tar -xf - -C "$work/repo"

# The copy's own package, not the one `pip install -e` points at; the first
# status check after 5 s, not the plugin's 40: the demo's jobs take seconds.
export PYTHONPATH=$work/repo/src${PYTHONPATH:+:$PYTHONPATH}
# Two passes: everything but the stage-1 shards, then the shards alone. The
# shards are then the only GPU jobs ready at once, so whether they overlap
# says whether the workflow lets a cluster spread them, not how SLURM happened
# to interleave them with extraction jobs (a one-pass run once put one shard
# before an extraction job and one after).
start=$(date +%s)
for pass in "--omit-from dvt_stage1_shard" ""; do
  # shellcheck disable=SC2086  # $pass is empty or two words
  (cd "$work/repo" && snakemake --profile profiles/slurm "${TARGETS[@]}" --configfile config/demo.yaml \
    --slurm-init-seconds-before-status-checks 5 $pass) \
    >>"$work/snakemake.log" 2>&1 || { tail -n 60 "$work/snakemake.log"; exit 1; }
done
echo "slurm_test: ${TARGETS[*]} on SLURM in $(( $(date +%s) - start )) s"

if [ -n "$keep" ]; then
  python .ci/slurm_check.py --log "$work/snakemake.log" --concurrent dvt_stage1_shard
else
  python .ci/slurm_check.py --log "$work/snakemake.log" --concurrent dvt_stage1_shard \
    --results "$work/repo/results/demo" --expected "$local_results"
fi

.ci/slurm_cluster.sh stop "$work/cluster"
trap - EXIT
[ -n "$keep" ] || rm -rf "$work"  # kept when a check fails, for its logs
