"""`ray job submit -- python jobs/retrain.py [-c CONFIG] [--force] [--recent-data PATH] …`

Entrypoint for one pass of the retrain policy as a Ray job; the arguments are those of
`raymlops retrain`. Under `ray job submit` the driver joins the job's cluster (RAY_ADDRESS)
instead of starting a local Ray; run directly, it behaves exactly like `raymlops retrain`.
"""

import sys

from raymlops.cli.main import cli

if __name__ == "__main__":
    cli(["retrain", *sys.argv[1:]], prog_name="jobs/retrain.py")
