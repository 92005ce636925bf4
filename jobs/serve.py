"""`ray job submit -- python jobs/serve.py [-c CONFIG] [--set K=V] [--version N]`

Entrypoint for deploying the champion as a Ray job; the arguments are those of
`raymlops serve`. Under `ray job submit` the driver joins the job's cluster (RAY_ADDRESS), so
the Serve application is deployed there and, being detached, keeps serving after the job
ends. Run directly, it behaves exactly like `raymlops serve`.
"""

import sys

from raymlops.cli.main import cli

if __name__ == "__main__":
    cli(["serve", *sys.argv[1:]], prog_name="jobs/serve.py")
