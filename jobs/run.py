"""`ray job submit -- python jobs/run.py [-c CONFIG] [--set K=V]`

Entrypoint for the whole pipeline (train → register → champion → sample predictions) as one
Ray job; the arguments are those of `raymlops run`.
"""

import sys

from raymlops.cli import cli

if __name__ == "__main__":
    cli(["run", *sys.argv[1:]], prog_name="jobs/run.py")
