"""Train the embedded example for one epoch and register it as model `sys.argv[1]` in the
registry MLFLOW_TRACKING_URI names; print the version and this machine's host name.

A script, not a test: the registry tests run it in processes of their own (Ray jobs on
other nodes, a process beside a broken server) so that nothing is shared but the server.
"""

import shutil
import socket
import sys
import tempfile
from pathlib import Path

from raymlops.core.config import load_config
from raymlops.data.dataset import load_dataset
from raymlops.model.features import Preprocessor
from raymlops.registry.store import Registry
from raymlops.train.loop import TrainingArrays, fit, load_best_predictor

name = sys.argv[1]
config = load_config(None, ["train.epochs=1", f"registry.model_name={name}"])
dataset, splits, roles = load_dataset(config.data, config.features)
prep = Preprocessor.fit(splits.train, roles, config.features)
arrays = TrainingArrays.build(prep, splits.train, splits.validation, roles.label)
keep = Path(tempfile.mkdtemp())


def report(metrics: dict[str, float], folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(folder, keep)


best = fit(config, arrays, report)
predictor = load_best_predictor(keep, config, arrays.preprocessor)
registry = Registry()
metrics = {k: float(v) for k, v in best.items() if k.startswith("val_")}
with registry.pipeline_run(config, name) as run_id:
    info = registry.register(config, run_id, predictor, dataset, metrics)
print("registered", info.version, "on", socket.gethostname())
