"""`ray job submit -- python jobs/train.py [-c CONFIG] [--set K=V] [--resume]`

Entrypoint for the training step as a Ray job; the arguments are those of `raymlops train`.
Under `ray job submit` the driver joins the job's cluster (RAY_ADDRESS) instead of starting
a local Ray; run directly, it behaves exactly like `raymlops train`.
"""

import sys

from raymlops.cli.main import cli

if __name__ == "__main__":
    cli(["train", *sys.argv[1:]], prog_name="jobs/train.py")
