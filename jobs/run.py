"""`ray job submit -- python jobs/run.py [-c CONFIG] [--set K=V] [--train-only]`

Entrypoint for the main job as one Ray job: the whole closed loop (train → gate → promote →
batch → serve → traffic → monitor → retrain → card) in this job's driver, on the job's
cluster; the arguments are those of `raymlops run`. (`raymlops run --address http://…`
instead runs each step as a Ray job of its own: `jobs/run.py --step STEP --work FOLDER`.)
"""

import sys

from raymlops.cli.main import cli

if __name__ == "__main__":
    cli(["run", *sys.argv[1:]], prog_name="jobs/run.py")
