"""The training engine behind main.py (nothing else imports it).

    run_config.py    what a command line resolves to: run name, dataset entry, TSN keywords, plan
    trainer.py       train_one_epoch / validate; LoopSettings (how the loop steps) and TrainParts
                     (what it acts on); the run's position is ops.checkpoint.RunState
    data_wait.py     per-step data wait vs compute; the epoch's "waiting on data" warning
    stop.py          SIGTERM / SIGUSR1 / Ctrl-C as a flag the loop polls (save, then stop);
                     loader workers ignore them; SLURM requeue
    lr_scheduler.py  the published per-iteration warmup + cosine / step schedule
    seeding.py       reproducible sample order and augmentation, epoch by epoch, resumable
    preflight.py     the data checked before the first step: each list reads, train = val
    run_logger.py    tensorboardX scalars, log.csv and log.txt of a run
    run_folder.py    whose a run folder is: run_config.json, refusing another run's folder
                     (unless --resume / --overwrite), output folders that cannot be written;
                     what --resume may continue; no run output over a run input
    run_lock.py      one live run per folder: rank 0's flock on run.lock, freed when it dies
    compile.py       --compile with a fall-back to eager mode
    runtime_report.py  what actually runs (devices, backend, attention kernels), logged and saved
    recipe.py        the optional recipe flags (all off by default), their run-name tokens
    mixing.py        --mixup / --cutmix of whole clips, soft targets
    ema.py           --ema: the weight average, its checkpoint key and ckpt.ema.pth.tar
    precise_bn.py    --precise_bn: BatchNorm statistics recomputed before validation
    repeated_aug.py  --repeated_aug: the sampler that repeats each index K times per epoch
Checkpoints (saving, resuming) are ops/checkpoint.py, shared with test_models.py and tools/.
"""
