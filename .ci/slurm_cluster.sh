#!/usr/bin/env bash
# A throw-away one-node SLURM cluster on 127.0.0.1, as Debian packages it:
# munge, MariaDB + slurmdbd (sacct must work: the executor plugin polls it),
# slurmctld, slurmd; partitions `cpu` (default) and `gpu`, and a GPU GRES that
# needs no GPU (AutoDetect off, each GPU's File a link to /dev/null).
#
#   .ci/slurm_cluster.sh install         # apt-get the packages
#   .ci/slurm_cluster.sh start DIR       # configs, state and logs under DIR
#   .ci/slurm_cluster.sh stop DIR        # stops every daemon start started
#
# The configs are linked from /etc/slurm, where jobs look for them as on a real
# cluster (the executor plugin drops SLURM_* variables, SLURM_CONF included).
set -euo pipefail

GPUS=2            # two GPU jobs must be able to run at once
DB_PORT=33306     # not 3306: leave a system MariaDB alone
CONFS="slurm.conf gres.conf slurmdbd.conf"

install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurm-wlm slurmdbd munge mariadb-server
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
  local seconds=$1 what=$2; shift 2
  for _ in $(seq "$seconds"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "slurm_cluster: $what did not come up; logs in $DIR" >&2
  exit 1
}

write_configs() {
  local host cpus
  host=$(hostname -s)
  cpus=$(nproc)
  mkdir -p "$DIR"/{state,spool,mysql,mysqld,munge}
  cat >"$DIR/slurm.conf" <<EOF
ClusterName=vitlocal-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePass=$DIR/munge/munge.socket
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
# Memory is not a consumable here (CR_Core) and the configured size wins over
# the machine's, so rules may ask for what a real GPU node has.
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=128000 Gres=gpu:$GPUS State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
  # One device file per GPU, distinct names (Slurm refuses duplicates): links to /dev/null.
  echo "AutoDetect=off" >"$DIR/gres.conf"
  for i in $(seq 0 $((GPUS - 1))); do
    ln -sfn /dev/null "$DIR/gpu$i"
    echo "NodeName=$host Name=gpu File=$DIR/gpu$i" >>"$DIR/gres.conf"
  done
  cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/slurmdbd.conf"
  for conf in $CONFS; do
    if [ -e "/etc/slurm/$conf" ] && [ "$(readlink "/etc/slurm/$conf")" != "$DIR/$conf" ]; then
      echo "slurm_cluster: /etc/slurm/$conf exists and is not ours; not touching a real cluster" >&2
      exit 1
    fi
    ln -sfn "$DIR/$conf" "/etc/slurm/$conf"
  done
}

start() {
  write_configs
  chown munge: "$DIR/munge"
  runuser -u munge -- munged --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
    --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for 10 munged munge --socket="$DIR/munge/munge.socket" -n

  chown mysql: "$DIR/mysql" "$DIR/mysqld"
  mariadb-install-db --user=mysql --datadir="$DIR/mysql" --auth-root-authentication-method=socket >"$DIR/mysqld/install.log"
  mariadbd --user=mysql --datadir="$DIR/mysql" --socket="$DIR/mysqld/mysqld.sock" --pid-file="$DIR/mysqld/mysqld.pid" \
    --port=$DB_PORT --bind-address=127.0.0.1 --log-error="$DIR/mysqld/mysqld.log" &
  wait_for 30 MariaDB mariadb --socket="$DIR/mysqld/mysqld.sock" -e "select 1"
  mariadb --socket="$DIR/mysqld/mysqld.sock" -e "CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

  slurmdbd
  wait_for 30 slurmdbd sacctmgr -i list cluster
  sacctmgr -i add cluster vitlocal-ci >/dev/null
  slurmctld
  slurmd
  wait_for 60 "the node" sh -c 'sinfo -h -N -o %t | grep -qx idle'
  sinfo
}

stop_pid() {  # stop_pid PIDFILE: TERM the daemon it names and wait for it to go
  [ -s "$1" ] || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  for daemon in slurmd slurmctld slurmdbd mysqld/mysqld munge/munged; do stop_pid "$DIR/$daemon.pid"; done
  for conf in $CONFS; do
    [ "$(readlink "/etc/slurm/$conf")" != "$DIR/$conf" ] || rm "/etc/slurm/$conf"
  done
}

command=${1:?usage: $0 install|start DIR|stop DIR}
if [ "$command" != install ]; then
  DIR=$(realpath -m "${2:?usage: $0 $command DIR}")
fi
"$command"
