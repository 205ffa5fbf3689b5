#!/bin/bash
# rlay on a Slurm allocation: the broker runs in this batch script (on the job's first node); game
# instances and rlay workers are placed per node with srun, each dialing the broker at $RLAY_BROKER.
# A recipe to adapt (paths, counts, partition); tests/test_fleet.py checks its syntax with bash -n.
#
#   rlay keys generate ~/rlay-keys          # once, on a file system every node mounts
#   sbatch configs/slurm-fleet.sh
# The trainer (a later step of this job, or a host that reaches the nodes) leases from the address
# this script prints:
#   RlayVectorEnv.remote("Arena-v0", 256, broker="tcp://HEAD:5555", curve=Curve.from_dir(KEYS, "client"))
#
#SBATCH --job-name=rlay-fleet
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=9                  # 8 game instances and 1 rlay worker per node
#SBATCH --cpus-per-task=2
#SBATCH --time=08:00:00
#SBATCH --output=rlay-fleet-%j.log

set -euo pipefail

KEYS=${RLAY_KEYS:-$HOME/rlay-keys}
GAME=${GAME:-/opt/games/arena/ArenaServer.sh}
GAMES_PER_NODE=${GAMES_PER_NODE:-8}
# The address the other nodes reach this one at: the first of `hostname -I` (set HEAD_IP to pick the
# network, e.g. the InfiniBand interface's address).
HEAD_IP=${HEAD_IP:-$(hostname -I | awk '{print $1}')}
export RLAY_BROKER="tcp://$HEAD_IP:5556"    # srun passes the environment on to every task

# The broker, bound to every interface of this node: CURVE is on, so only holders of the client keys
# get in. It stops with the job.
rlay broker --frontend tcp://0.0.0.0:5555 --backend tcp://0.0.0.0:5556 --curve "$KEYS" &
until rlay status --broker tcp://127.0.0.1:5555 --curve "$KEYS" >/dev/null 2>&1; do sleep 1; done
echo "rlay broker up: trainers on tcp://$HEAD_IP:5555, workers on $RLAY_BROKER"

# Game instances: GAMES_PER_NODE tasks per node, one instance each. RLAY_PROGRAM and RLAY_INSTANCE
# (the task's rank) let the broker count them (`rlay status`). --kill-on-bad-exit=0: a game that
# crashes does not end the others; srun does not restart it either (rlay up does, for [[programs]]).
srun --exact --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node="$GAMES_PER_NODE" --cpus-per-task=2 \
    --kill-on-bad-exit=0 --export=ALL,RLAY_PROGRAM=arena \
    bash -c 'RLAY_INSTANCE=$SLURM_PROCID exec "$0" -nullrhi -rlay-curve="$1"' "$GAME" "$KEYS" &

# Python workers: one `rlay worker` per node, 4 processes of 16 envs, restarted by it when they die.
srun --exact --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --cpus-per-task=2 \
    rlay worker CartPole-v1 --broker "$RLAY_BROKER" -p 4 -k 16 --curve "$KEYS" &

wait
