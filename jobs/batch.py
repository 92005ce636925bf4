"""`ray job submit -- python jobs/batch.py --input IN --output OUT [-c CONFIG] [--set K=V] …`

Entrypoint for batch inference as a Ray job; the arguments are those of `raymlops batch`.
Under `ray job submit` the driver joins the job's cluster (RAY_ADDRESS) instead of starting
a local Ray; run directly, it behaves exactly like `raymlops batch`. Input and output must
be paths or URIs that every node of the cluster can reach.
"""

import sys

from raymlops.cli.main import cli

if __name__ == "__main__":
    cli(["batch", *sys.argv[1:]], prog_name="jobs/batch.py")
