"""`ray job submit -- python jobs/lifecycle.py [-c CONFIG] [--interval 1h] [--iterations N]`

The long-running lifecycle job: monitor → retrain on an interval (`raymlops watch`). Under
`ray job submit` the driver joins the job's cluster (RAY_ADDRESS); run directly, it behaves
exactly like `raymlops watch`.
"""

import sys

from raymlops.cli.main import cli

if __name__ == "__main__":
    cli(["watch", *sys.argv[1:]], prog_name="jobs/lifecycle.py")
