# The image every cluster node runs (see cluster.yaml): Ray 2.60 with raymlops installed.
FROM rayproject/ray:2.60.0-py311-gpu
WORKDIR /home/ray/raymlops
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users raymlops ./raymlops
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users examples ./examples
RUN pip install --no-cache-dir torch && pip install --no-cache-dir -e . "boto3>=1.26" "psycopg2-binary>=2.9"
