# The image every cluster node runs (see cluster.yaml): Ray 2.60 with raymlops installed as a
# package (not editable), every dependency at the exact version CI tested
# (deploy/constraints.txt), and the cluster extras (S3, PostgreSQL).
#   docker build -t <registry>/raymlops:0.1.0 . && docker push <registry>/raymlops:0.1.0
FROM rayproject/ray:2.60.0-py311-gpu
WORKDIR /home/ray/raymlops
COPY --chown=ray:users deploy/constraints.txt ./constraints.txt
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users raymlops ./raymlops
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users examples ./examples
RUN pip install --no-cache-dir -c constraints.txt torch \
    && pip install --no-cache-dir -c constraints.txt ".[cluster]"
