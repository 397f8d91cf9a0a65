#!/usr/bin/env python
"""A stand-in for ``tools/train_net.py`` in the launcher tests: the same arguments, the same files, no training.

It reads ``OUTPUT_DIR`` from the ``KEY VALUE`` overrides and ``SEED`` from the config file, appends what it saw to
``OUTPUT_DIR/fake_calls.jsonl`` (arguments, whether ``SIGUSR2`` is ignored, the signal that stopped it), and then,
as the environment variable ``FAKE_TRAIN`` says:

* ``finish`` (default), or any start with a checkpoint in ``OUTPUT_DIR``: writes ``model_final.pth`` and a
  ``metrics.json`` with a final evaluation (mIoU ``50 + SEED``, IoU-road ``80 + SEED``) and exits 0;
* ``wait``: writes ``started``, then waits for a pre-emption signal (SIGTERM, SIGINT, SIGUSR1): writes the
  checkpoint ``model_0000001.pth`` + ``last_checkpoint`` and exits ``128 + signal``, like the real trainer;
* ``preempt_self``: as ``wait``, but first sends ``SIGUSR2`` to its parent (the submitit job: SLURM's warning).
"""
import json
import os
import re
import signal
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    config = args[args.index("--config-file") + 1]
    opts = args[args.index("--num-gpus") + 2:]
    output_dir = opts[opts.index("OUTPUT_DIR") + 1]
    os.makedirs(output_dir, exist_ok=True)
    with open(config) as f:
        seed = int(re.search(r"^SEED: (\d+)", f.read(), re.MULTILINE).group(1))
    call = {"argv": args, "resume": "--resume" in args,
            "usr2_ignored": signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN,
            "pgid_is_pid": os.getpgid(0) == os.getpid()}
    behaviour = os.environ.get("FAKE_TRAIN", "finish")
    resumed = os.path.isfile(os.path.join(output_dir, "last_checkpoint"))
    if behaviour != "finish" and not resumed:
        received = []
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, lambda signum, frame: received.append(signum))
        open(os.path.join(output_dir, "started"), "w").close()
        if behaviour == "preempt_self":
            os.kill(os.getppid(), signal.SIGUSR2)
        deadline = time.time() + 60
        while not received and time.time() < deadline:
            time.sleep(0.05)
        if not received:
            return 3
        time.sleep(0.3)  # "finish the iteration": a second signal now would arrive while it is pending
        call["signals"] = [signal.Signals(s).name for s in received]
        open(os.path.join(output_dir, "model_0000001.pth"), "wb").close()
        with open(os.path.join(output_dir, "last_checkpoint"), "w") as f:
            f.write("model_0000001.pth")
        _record(output_dir, call)
        return 128 + received[0]
    with open(os.path.join(output_dir, "metrics.json"), "a") as f:
        f.write(json.dumps({"iteration": 0, "total_loss": 1.0}) + "\n")
        f.write(json.dumps({"iteration": 10 ** 6, "sem_seg/mIoU": 50.0 + seed, "sem_seg/IoU-road": 80.0 + seed,
                            "sem_seg/IoU-sky": float("nan")}) + "\n")
    open(os.path.join(output_dir, "model_final.pth"), "wb").close()
    _record(output_dir, call)
    return 0


def _record(output_dir: str, call: dict) -> None:
    with open(os.path.join(output_dir, "fake_calls.jsonl"), "a") as f:
        f.write(json.dumps(call) + "\n")


if __name__ == "__main__":
    sys.exit(main())
