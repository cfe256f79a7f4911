#!/bin/bash
# Example SLURM job: 2 nodes x 8 GPUs, one training process (srun task) per GPU, stopped cleanly
# before the time limit and requeued until the run is complete. See docs/cluster.md.
#
# How it works: 180 s before the time limit SLURM sends SIGUSR1 to every task. Each process
# finishes its iteration, rank 0 writes model_<iteration>.pth (last_checkpoint names it) and
# every task exits with code 75; srun returns 75, and this script requeues the job. The
# requeued job runs the same command: --resume continues from last_checkpoint (the first job,
# with no checkpoint yet, starts from train.init_checkpoint).
#
#SBATCH --job-name=dinov3-m2f
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8        # one task per GPU
#SBATCH --gpus-per-node=8          # every task sees all GPUs of its node and takes cuda:<local rank>
#SBATCH --cpus-per-task=8          # data-loading workers of one process
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@180          # > one iteration + an evaluation that may fall due + a checkpoint
#SBATCH --requeue
#SBATCH --open-mode=append         # a requeued job appends to the same log
#SBATCH --output=%x-%j.out

CONFIG=configs/loveda/m2f_vitl16_sat493m_512.py
OUTPUT=/shared/runs/m2f_vitl16_sat493m_loveda   # one folder that every node sees
PREEMPTED=75                                    # tools/train_net.py's code after a preemption checkpoint

# The rendezvous: rank 0 listens on the first node of the job.
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))

srun python tools/train_net.py --config-file "$CONFIG" --resume --dist-timeout 600 \
    train.output_dir="$OUTPUT" model.backbone.weights=/shared/weights/dinov3_vitl16_sat493m.pth
code=$?  # srun returns the highest exit code of its tasks

if [ "$code" -eq "$PREEMPTED" ]; then
    echo "preempted: requeueing job $SLURM_JOB_ID; it continues with --resume"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$code"
