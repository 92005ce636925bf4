"""`ray job submit -- python jobs/monitor.py [-c CONFIG] [--since 1d] [--source PATH] …`

Entrypoint for the monitoring step as a Ray job; the arguments are those of
`raymlops monitor`. Under `ray job submit` the driver joins the job's cluster (RAY_ADDRESS)
instead of starting a local Ray; run directly, it behaves exactly like `raymlops monitor`.
"""

import sys

from raymlops.cli.main import cli

if __name__ == "__main__":
    cli(["monitor", *sys.argv[1:]], prog_name="jobs/monitor.py")
