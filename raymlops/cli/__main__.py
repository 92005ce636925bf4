"""`python -m raymlops.cli …`: how a Ray job runs a raymlops command on a cluster node."""

from raymlops.cli.main import main

main()
