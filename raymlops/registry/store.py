"""Runs, model versions and aliases in MLflow — the tracking store and model registry.

MLflow is the registry; this module adds what raymlops needs on top: nested trial runs with
metric history, dataset lineage, pickle-free artifacts whose digests are recorded on the
version and verified before load, and the environment a version was trained under.
The embedded default is a SQLite file plus an artifact folder under RAYMLOPS_HOME; set
`registry.tracking_uri` or $MLFLOW_TRACKING_URI to use a tracking server instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from raymlops.core.config import config_hash
from raymlops.core.environment import code_version, default_actor, environment
from raymlops.core.errors import RegistryError, ServiceUnreachableError
from raymlops.core.home import home_dir
from raymlops.registry.lock import alias_lock, is_lock_name

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from raymlops.core.config import PipelineConfig
    from raymlops.data.dataset import DatasetVersion
    from raymlops.model.features import TabularInput
    from raymlops.model.predictor import Predictor

__all__ = [
    "CARD_ARTIFACT_PATH",
    "CARD_MARKDOWN",
    "TRIAL_RUN_STATUS",
    "AliasEvent",
    "ModelVersionInfo",
    "Registry",
    "TrialRecord",
    "check_server",
    "default_actor",
    "is_store_locked",
    "load_predictor",
    "metric_key",
    "retry_when_locked",
]

#: Where a version's model card lives among its MLflow run's artifacts (written by
#: `raymlops.loop.cards.store_card`; the Serve endpoint reads the Markdown one).
CARD_ARTIFACT_PATH = "card"
CARD_MARKDOWN = f"{CARD_ARTIFACT_PATH}/card.md"

CHAMPION = "champion"
CHALLENGER = "challenger"
AUDIT_EXPERIMENT = "raymlops-audit"
_AUDIT_TAG = "raymlops.audit."
_DIGEST_TAG = "raymlops.sha256."
_ENV_TAG = "raymlops.env."
_METRIC_TAG = "raymlops.metric."


@dataclass
class TrialRecord:
    """One Tune trial as recorded in MLflow: sampled values, metric history, outcome."""

    trial_id: str
    params: dict[str, Any]
    history: list[dict[str, float]]
    status: str
    error: str | None = None
    #: How it ended, a key of `TRIAL_RUN_STATUS`; None when only `status` is known.
    outcome: str | None = None

    @property
    def run_status(self) -> str:
        """The MLflow status of the trial's run: FINISHED, KILLED (stopped by the scheduler
        or the search) or FAILED."""
        if self.status == "ERROR":
            return "FAILED"
        return TRIAL_RUN_STATUS.get(self.outcome or "", "FINISHED")


#: How a trial ended (its run's tag `raymlops.trial_outcome`) and the MLflow run status that
#: gives: it ran every epoch, early stopping (patience) ended it, the scheduler (ASHA) or the
#: search stopped it before its last epoch, or it failed.
TRIAL_RUN_STATUS = {
    "completed": "FINISHED",
    "early_stopped": "FINISHED",
    "stopped": "KILLED",
    "error": "FAILED",
}


@dataclass
class ModelVersionInfo:
    """A registered model version as shown by `raymlops models show`."""

    name: str
    version: int
    run_id: str | None
    aliases: list[str]
    created: float
    tags: dict[str, str] = field(default_factory=dict)

    def tags_under(self, prefix: str) -> dict[str, str]:
        """The tags whose key starts with `prefix`, keyed by the rest of the key."""
        return {k.removeprefix(prefix): v for k, v in self.tags.items() if k.startswith(prefix)}

    @property
    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.tags_under(_METRIC_TAG).items()}

    @property
    def digests(self) -> dict[str, str]:
        """SHA-256 of each artifact file, as recorded when the version was registered."""
        return self.tags_under(_DIGEST_TAG)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "aliases": self.aliases,
            "run_id": self.run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "metrics": self.metrics,
            "dataset_digest": self.tags.get("raymlops.dataset_digest"),
            "config_hash": self.tags.get("raymlops.config_hash"),
            "trial_id": self.tags.get("raymlops.trial_id"),
            "tags": self.tags,
        }


@dataclass
class AliasEvent:
    """One entry of a model's alias history: an alias moved (or was cleared), or a
    lifecycle decision about a version (approval, gate result, canary) was recorded.

    MLflow keeps only an alias's current target; these events, stored append-only as runs of
    the `raymlops-audit` experiment, are the history a governance review needs.
    """

    model: str
    alias: str
    action: str
    from_version: int | None
    to_version: int | None
    timestamp: float
    by: str
    reason: str
    sequence: int
    details: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    moved: bool = False  # True when the event moved (or cleared) the MLflow alias

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.timestamp)),
            "model": self.model,
            "alias": self.alias,
            "action": self.action,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "by": self.by,
            "reason": self.reason,
            "details": self.details,
            "run_id": self.run_id,
            "moved": self.moved,
        }


_T = TypeVar("_T")


def is_store_locked(exc: BaseException) -> bool:
    """Whether `exc` is the tracking store refusing a request for now: SQLite's 'database
    is locked' (another writer held the file past MLflow's 20 s busy timeout, or SQLite saw
    two writers deadlock and failed one at once) or a server's TEMPORARILY_UNAVAILABLE.
    Worth retrying: nothing of the request was written."""
    text = str(exc)
    return (
        "database is locked" in text
        or "database table is locked" in text
        or getattr(exc, "error_code", None) == "TEMPORARILY_UNAVAILABLE"
    )


def retry_when_locked(
    action: Callable[[], _T],
    *,
    attempts: int = 5,
    wait_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> _T:
    """`action()`, tried again (waits doubling from `wait_s`, at most `attempts` tries) while
    the store is locked (`is_store_locked`); any other error, or the last one, is raised.
    `action` must be safe to repeat after a locked failure (one MLflow request is: a locked
    request wrote nothing). `on_retry(error, wait)` is told before each wait."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:
            if attempt + 1 >= attempts or not is_store_locked(exc):
                raise
            wait = wait_s * 2**attempt
            if on_retry is not None:
                on_retry(exc, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _epoch_rows(history: list[dict[str, float]]) -> list[tuple[int, dict[str, float]]]:
    """Each metric-history row with its MLflow step: its epoch (else its 1-based place)."""
    return [(int(row.get("epoch", i + 1)), row) for i, row in enumerate(history)]


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if not isinstance(value, str) else value


def _check_artifact_names(name: str, version: int, digests: dict[str, str]) -> None:
    """RegistryError (exit 2) naming the version and the tag when a digest tag names
    anything but a plain artifact file: a tampered tag cannot make a loader read or write
    outside the model folder."""
    from raymlops.model.artifacts import plain_artifact_name

    for file in digests:
        if not plain_artifact_name(file):
            raise RegistryError(
                f"{name} v{version}: tag {_DIGEST_TAG}{file} names {file!r}, not a plain "
                "artifact file name; refusing to load it"
            )


def check_server(uri: str, attempts: int = 3, timeout_s: float = 3.0) -> None:
    """ServiceUnreachableError naming `uri` unless the MLflow tracking server there answers
    (any HTTP status counts). Asked once before the first request: MLflow's own client
    retries a dead server for about four minutes before it says so."""
    import urllib.error
    import urllib.request

    reason = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                return
        except urllib.error.HTTPError:
            return  # it answers (authentication, a proxy without /health)
        except (urllib.error.URLError, OSError) as exc:
            cause = getattr(exc, "reason", exc)
            reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        if attempt + 1 < attempts:
            time.sleep(1.0 + attempt)
    raise ServiceUnreachableError(
        f"the MLflow tracking server {uri} does not answer ({reason}); start it, or point "
        "MLFLOW_TRACKING_URI (or registry.tracking_uri) at one that runs"
    )


class Registry:
    """MLflow tracking + model registry behind one object (embedded SQLite by default)."""

    def __init__(self, tracking_uri: str | None = None, home: str | Path | None = None) -> None:
        self.home = home_dir(home)
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self.embedded = uri is None
        if uri is None:
            self.home.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{self.home / 'mlflow.db'}"
        self.tracking_uri = uri
        self._client: MlflowClient | None = None

    @classmethod
    def from_config(cls, config: PipelineConfig, home: str | Path | None = None) -> Registry:
        return cls(config.registry.tracking_uri, home)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            # MLflow prints "🏃 View run … at: URL" to stdout for every run that ends against
            # a server (a search's trials: one line each); raymlops names its runs itself.
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
            if self.tracking_uri.startswith(("http://", "https://")):
                check_server(self.tracking_uri)
            from mlflow import MlflowClient

            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client

    def ui_command(self) -> str:
        """The exact `mlflow ui` line that shows this store."""
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"

    # ------------------------------------------------------------------ experiments
    def experiment_id(self, name: str) -> str:
        """Id of the named experiment, created (with artifacts under home) if needed."""
        client = self.client
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None  # a tracking server's own artifact store
        if self.embedded:
            location = (self.home / "artifacts").as_uri()
        elif self.tracking_uri.startswith("sqlite:///"):
            # Next to the database file: MLflow's default would be ./mlruns of whatever
            # directory the first writer ran in.
            database = Path(self.tracking_uri.removeprefix("sqlite:///")).resolve()
            location = (database.parent / "artifacts").as_uri()
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except Exception:  # a concurrent creator won the race
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def start_run(
        self,
        run_name: str,
        tags: dict[str, str] | None = None,
        *,
        experiment: str | None = None,
        experiment_id: str | None = None,
    ) -> str:
        """Open an MLflow run of a raymlops step, in `experiment` (by name) or
        `experiment_id`: named and tagged, with the Ray job's submission id when it runs as
        one. End it with `end_run`; `run` does both around a block."""
        if experiment_id is None:
            experiment_id = self.experiment_id(experiment or "Default")
        all_tags = {"mlflow.runName": run_name, **(tags or {})}
        submission_id = os.environ.get("RAYMLOPS_SUBMISSION_ID")
        if submission_id:  # running as a Ray job (raymlops submit / run --address http://…)
            all_tags["raymlops.job_submission_id"] = submission_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return str(run.info.run_id)

    def end_run(self, run_id: str, succeeded: bool) -> None:
        """Close a run as FINISHED or FAILED."""
        self.client.set_terminated(run_id, status="FINISHED" if succeeded else "FAILED")

    @contextmanager
    def run(
        self,
        run_name: str,
        tags: dict[str, str] | None = None,
        *,
        experiment: str | None = None,
        experiment_id: str | None = None,
    ) -> Iterator[str]:
        """One MLflow run around a block (see `start_run`): FINISHED when the block ends,
        FAILED if it raises. Yields the run id."""
        run_id = self.start_run(run_name, tags, experiment=experiment, experiment_id=experiment_id)
        try:
            yield run_id
        except BaseException:
            self.end_run(run_id, succeeded=False)
            raise
        self.end_run(run_id, succeeded=True)

    @contextmanager
    def pipeline_run(
        self, config: PipelineConfig, run_name: str, tags: dict[str, str] | None = None
    ) -> Iterator[str]:
        """A parent MLflow run for one training pipeline (its config as params); FAILED if
        the block raises."""
        all_tags = {
            "raymlops.config_hash": config_hash(config),
            "raymlops.code_version": code_version(),
            "raymlops.pipeline": config.name,
            **(tags or {}),
        }
        with self.run(run_name, all_tags, experiment=config.registry.experiment) as run_id:
            params: dict[str, str] = {}
            for section in ("data", "features", "model", "train", "tune"):
                _flatten(section, getattr(config, section).model_dump(mode="json"), params)
            self.log(run_id, params=params)
            yield run_id

    def log(
        self,
        run_id: str,
        metrics: list[tuple[str, float, int]] | None = None,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        timestamps: list[int] | None = None,
    ) -> None:
        """Metrics (key, value, step), params and tags of a run, in MLflow's batch limits;
        `timestamps` (ms, one per metric) record a metric history's times."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metric_objs = [
            Metric(k, float(v), timestamps[i] if timestamps else now, step)
            for i, (k, v, step) in enumerate(metrics or [])
        ]
        param_objs = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        tag_objs = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        # MLflow accepts at most 1000 metrics, 100 params and 100 tags per batch.
        for i in range(0, len(metric_objs), 1000):
            self.client.log_batch(run_id, metrics=metric_objs[i : i + 1000])
        for i in range(0, len(param_objs), 100):
            self.client.log_batch(run_id, params=param_objs[i : i + 100])
        for i in range(0, len(tag_objs), 100):
            self.client.log_batch(run_id, tags=tag_objs[i : i + 100])

    def log_text(self, run_id: str, text: str, path: str) -> None:
        """Store `text` as artifact `path` of a run."""
        self.client.log_text(run_id, text, path)

    def log_file(self, run_id: str, file: str | Path, artifact_path: str) -> None:
        """Store one file under `artifact_path` of a run."""
        self.client.log_artifact(run_id, str(file), artifact_path=artifact_path)

    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str) -> str:
        """Store a folder's files under `artifact_path` of a run; returns their base URI."""
        self.client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)
        return f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"

    def get_run(self, run_id: str) -> Any:
        """An MLflow run (info, data), or None if it cannot be read."""
        try:
            return self.client.get_run(run_id)
        except Exception:
            return None

    def child_runs(self, run: Any) -> list[Any]:
        """The runs nested under `run` (its trials), at most 1000; [] if none can be read."""
        try:
            return list(
                self.client.search_runs(
                    [run.info.experiment_id],
                    filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'",
                    max_results=1000,
                )
            )
        except Exception:
            return []

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        """Tag a registered version."""
        self.client.set_model_version_tag(name, str(version), key, value)

    def log_dataset(self, run_id: str, dataset: DatasetVersion, context: str = "training") -> None:
        """Attach the dataset (digest, schema, profile summary) to a run as an MLflow input."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        schema = json.dumps(
            {"mlflow_colspec": [{"name": k, "type": v} for k, v in dataset.schema.items()]}
        )
        profile = json.dumps({"num_rows": dataset.num_rows, "split": dataset.split})
        entity = Dataset(
            name=Path(dataset.source).name or dataset.source,
            digest=dataset.digest[:36],
            source_type="local" if "://" not in dataset.source else dataset.source.split(":")[0],
            source=json.dumps({"uri": dataset.source}),
            schema=schema,
            profile=profile,
        )
        self.client.log_inputs(
            run_id, datasets=[DatasetInput(entity, [InputTag("mlflow.data.context", context)])]
        )

    def trial_runs(self, parent_run_id: str, experiment_id: str) -> dict[str, Any]:
        """The trial runs nested under a search's parent run, by trial id (the newest where
        a trial has several)."""
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            max_results=50000,
        )
        found: dict[str, Any] = {}
        for run in runs:  # newest first
            trial_id = run.data.tags.get("raymlops.trial_id")
            if trial_id:
                found.setdefault(trial_id, run)
        return found

    def create_trial_run(
        self,
        experiment_id: str,
        parent_run_id: str,
        trial_id: str,
        params: dict[str, Any],
        tags: dict[str, str] | None = None,
    ) -> str:
        """A run for one trial, nested under its search's parent run, recorded as the acting
        user's (`default_actor`), its sampled values as params; returns its id. The live
        tracker and `log_trials` both create trial runs through this. If the params cannot
        be written the run is ended FAILED (and the error raised): a caller that got no id
        makes a new run later, and the half-made one must not stay RUNNING beside it."""
        run = retry_when_locked(
            lambda: self.client.create_run(
                experiment_id,
                run_name=f"trial-{trial_id}",
                tags={
                    "mlflow.parentRunId": parent_run_id,
                    "raymlops.trial_id": trial_id,
                    "mlflow.user": default_actor(),
                    **(tags or {}),
                },
            )
        )
        run_id = str(run.info.run_id)
        encoded = {k: json.dumps(v) for k, v in params.items()}
        try:
            retry_when_locked(lambda: self.log(run_id, params=encoded))
        except BaseException:
            with contextlib.suppress(Exception):  # the params' error is the one to raise
                retry_when_locked(lambda: self.client.set_terminated(run_id, status="FAILED"))
            raise
        return run_id

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which run `run_id` has metric `key`."""
        history = retry_when_locked(lambda: self.client.get_metric_history(run_id, key))
        return {int(m.step) for m in history}

    def log_trials(
        self, parent_run_id: str, config: PipelineConfig, trials: list[TrialRecord]
    ) -> None:
        """One nested run per trial with its sampled values, per-epoch metric history and
        how it ended (status, `raymlops.trial_outcome`, error).

        The runs the live tracker (`raymlops.train.tracking`) made while the search ran are
        completed, not duplicated: each gets only the epochs it lacks (judged by the steps
        of the search's metric) and the params it lacks, then its final status."""
        exp = self.experiment_id(config.registry.experiment)
        live = retry_when_locked(lambda: self.trial_runs(parent_run_id, exp))
        metric, _ = config.tune.resolved_metric()
        for trial in trials:
            run = live.get(trial.trial_id)
            tags = {
                "raymlops.trial_status": trial.status,
                **({"raymlops.trial_outcome": trial.outcome} if trial.outcome else {}),
                **({"raymlops.trial_error": trial.error[:4000]} if trial.error else {}),
            }
            if run is None:
                run_id = self.create_trial_run(exp, parent_run_id, trial.trial_id, trial.params)
                logged, status, params = set(), "RUNNING", {}
            else:
                run_id, status = str(run.info.run_id), run.info.status
                logged = self.logged_steps(run_id, metric)
                params = {
                    k: json.dumps(v) for k, v in trial.params.items() if k not in run.data.params
                }
            history = [
                (key, value, step)
                for step, row in _epoch_rows(trial.history)
                if step not in logged
                for key, value in row.items()
                if key != "epoch" and isinstance(value, int | float)
            ]
            stamp = [int(time.time() * 1000)] * len(history)  # one stamp: a retry is a no-op
            retry_when_locked(
                partial(self.log, run_id, history, params=params, tags=tags, timestamps=stamp)
            )
            if status != trial.run_status:
                retry_when_locked(
                    partial(self.client.set_terminated, run_id, status=trial.run_status)
                )

    # ------------------------------------------------------------------ versions
    def register(
        self,
        config: PipelineConfig,
        run_id: str,
        predictor: Predictor,
        dataset: DatasetVersion,
        metrics: dict[str, float],
        extra_tags: dict[str, str] | None = None,
        extra_files: dict[str, Any] | None = None,
        input_example: TabularInput | None = None,
        *,
        assign_champion: bool = True,
    ) -> ModelVersionInfo:
        """Save the predictor as run artifacts and create a registered model version.

        The version is an MLflow pyfunc model (models from code: `raymlops.model.pyfunc`)
        with a signature, an input example (`input_example`, else as
        `registry.input_example` says: the training profile's typical row, or the first
        rows of the training data) and requirements pinned to this environment, so MLflow's
        own tools load and serve it; the digests recorded cover MLflow's files too.

        The version gets `challenger`, except that with `assign_champion` the model's very
        first version (no earlier version, no champion) gets `champion`. A model that has
        versions but no champion (its champion was cleared, e.g. after a first version failed
        its gate) never gets one at registration: only a passing gate and a promotion give
        it. Callers that gate before anything is champion pass `assign_champion=False`.
        """
        from mlflow.exceptions import MlflowException

        from raymlops.model.pyfunc import (
            example_frame,
            input_types,
            save_mlflow_model,
            version_example,
        )

        client = self.client
        name = config.registry.model_name
        files = {
            "profile.json": dataset.profile,
            "dataset.json": {k: v for k, v in dataset.to_dict().items() if k != "profile"},
            "config.json": config.model_dump(mode="json"),
            "metrics.json": metrics,
            **(extra_files or {}),
        }
        prep = predictor.preprocessor
        types = input_types(prep, dataset.schema, dataset.profile, config.serve.allow_missing)
        example = (
            version_example(
                prep,
                types,
                dataset.profile,
                dataset.source,
                config.data.format,
                config.registry.input_example,
            )
            if input_example is None
            else example_frame(prep, types, input_example)
        )
        with tempfile.TemporaryDirectory(prefix="raymlops-model-") as tmp:
            # MLflow writes into an empty folder only: its files first, then raymlops'.
            save_mlflow_model(tmp, prep, types, example, optional=config.serve.allow_missing)
            digests = predictor.save(tmp, extra_files=files)
            client.log_artifacts(run_id, tmp, artifact_path="model")
        self.log(run_id, metrics=[(k, v, 0) for k, v in metrics.items()])
        source = f"{client.get_run(run_id).info.artifact_uri}/model"
        tags = {
            "raymlops.dataset_digest": dataset.digest,
            "raymlops.dataset_source": dataset.source,
            "raymlops.config_hash": config_hash(config),
            "raymlops.code_version": code_version(),
            "raymlops.task": dataset.task,
            **{f"{_DIGEST_TAG}{k}": v for k, v in digests.items()},
            **{f"{_ENV_TAG}{k}": v for k, v in environment().items()},
            **{f"{_METRIC_TAG}{k}": repr(float(v)) for k, v in metrics.items()},
            **(extra_tags or {}),
        }
        try:
            client.get_registered_model(name)
        except MlflowException:
            with contextlib.suppress(MlflowException):  # another process created it first
                client.create_registered_model(name, description=config.description or None)
        mv = client.create_model_version(name, source, run_id=run_id, tags=tags)
        version = int(mv.version)
        with self._audit_lock(name):  # one champion, whoever registers at the same time
            no_champion = self.alias_target(name, CHAMPION) is None
            first = no_champion and assign_champion and not self._has_earlier(name, version)
            self._move_alias(
                name,
                CHAMPION if first else CHALLENGER,
                version,
                action="register",
                reason="first version of the model"
                if first
                else "new candidate"
                + (": no champion until a version passes its gate" if no_champion else ""),
            )
        return self.version_info(name, version)

    def _has_earlier(self, name: str, version: int) -> bool:
        """Whether `name` has a version older than `version` (registered, not deleted)."""
        found = self.client.search_model_versions(f"name = '{name}'")
        return any(int(v.version) < version for v in found)

    def _resolve(self, name: str, ref: str | int) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        client = self.client
        try:
            client.get_registered_model(name)
        except MlflowException:
            raise RegistryError(f"no registered model named '{name}'") from None
        try:
            if isinstance(ref, int) or str(ref).isdigit():
                return client.get_model_version(name, str(ref))
            return client.get_model_version_by_alias(name, str(ref))
        except MlflowException:
            what = f"version {ref}" if str(ref).isdigit() else f"alias '{ref}'"
            raise RegistryError(f"model '{name}' has no {what}") from None

    def version_info(self, name: str, ref: str | int) -> ModelVersionInfo:
        """A version by number or alias."""
        mv = self._resolve(name, ref)
        return ModelVersionInfo(
            name=name,
            version=int(mv.version),
            run_id=mv.run_id,
            aliases=list(mv.aliases or []),
            created=mv.creation_timestamp / 1000,
            tags=dict(mv.tags or {}),
        )

    def list_models(self) -> list[dict[str, Any]]:
        """Every registered model with its versions count, latest version and aliases."""
        out = []
        for model in self.client.search_registered_models(max_results=1000):
            if is_lock_name(model.name):  # an alias move in progress, not a model
                continue
            versions = self.client.search_model_versions(f"name = '{model.name}'")
            out.append(
                {
                    "name": model.name,
                    "versions": len(versions),
                    "latest_version": max((int(v.version) for v in versions), default=None),
                    "aliases": {k: int(v) for k, v in (model.aliases or {}).items()},
                    "description": model.description or "",
                }
            )
        return sorted(out, key=lambda m: m["name"])

    def list_versions(self, name: str) -> list[ModelVersionInfo]:
        """All versions of a model, newest first."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            raise RegistryError(f"no registered model named '{name}'") from None
        # search_model_versions leaves aliases empty on SQL stores (mlflow#9783): take them
        # from the registered model instead.
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = self.client.search_model_versions(f"name = '{name}'")
        return sorted(
            (
                ModelVersionInfo(
                    name,
                    int(v.version),
                    v.run_id,
                    sorted(aliases.get(str(v.version), [])),
                    v.creation_timestamp / 1000,
                    dict(v.tags or {}),
                )
                for v in versions
            ),
            key=lambda v: -v.version,
        )

    def registered_experiments(self, name: str) -> frozenset[str]:
        """Tune experiment paths whose best trial is already a version of `name`."""
        try:
            versions = self.list_versions(name)
        except RegistryError:
            return frozenset()
        return frozenset(
            v.tags["raymlops.tune_experiment"]
            for v in versions
            if "raymlops.tune_experiment" in v.tags
        )

    def download(self, name: str, ref: str | int) -> tuple[Path, ModelVersionInfo]:
        """Fetch a version's artifacts into the local cache and verify their digests."""
        import mlflow.artifacts

        from raymlops.model.artifacts import verify_folder

        mv = self._resolve(name, ref)
        info = self.version_info(name, int(mv.version))
        digests = info.digests
        if not digests:
            raise RegistryError(f"{name} v{info.version} records no artifact digests")
        _check_artifact_names(name, info.version, digests)
        cache = self.home / "cache" / "models" / name / str(info.version)
        try:
            verify_folder(cache, digests)
            return cache, info
        except Exception:
            if cache.exists():  # corrupt or incomplete: fetched again below
                shutil.rmtree(cache, ignore_errors=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=mv.source, dst_path=tmp, tracking_uri=self.tracking_uri
            )
            verify_folder(Path(local), digests)
            try:
                os.replace(local, cache)  # the whole verified folder appears at once
            except OSError:
                # Another process (replicas and batch actors start together) put the same
                # version there first: theirs is as good as ours once verified.
                verify_folder(cache, digests)
        return cache, info

    def run_text(self, run_id: str, path: str) -> str | None:
        """The text of artifact `path` of MLflow run `run_id`, or None if it has none."""
        try:
            with tempfile.TemporaryDirectory(prefix="raymlops-artifact-") as tmp:
                local = self.client.download_artifacts(run_id, path, tmp)
                return Path(local).read_text(encoding="utf-8")
        except Exception:
            return None

    def load_predictor(self, name: str, ref: str | int = CHAMPION) -> Predictor:
        """A verified Predictor for a version; warns if trained under other library versions."""
        from raymlops.model.predictor import Predictor, warn_on_environment_change

        folder, info = self.download(name, ref)
        warn_on_environment_change(info.tags_under(_ENV_TAG), environment())
        return Predictor.load(
            folder,
            expected_digests=info.digests,
            metadata={
                "name": name,
                "version": info.version,
                "aliases": info.aliases,
                "metrics": info.metrics,
                "run_id": info.run_id,
            },
        )

    def add_mlflow_flavor(self, name: str, ref: str | int) -> list[str]:
        """Make a version registered before raymlops wrote MLflow's files an MLflow pyfunc
        model in place: MLmodel, requirements, input example and the code file are written
        next to its existing artifacts (which stay as they are), their digests are added to
        the version's tags and to the folder's manifest. Returns the files added; [] when
        the version already is an MLflow model.

        Whether it is one is read from the registry (a digest tag for MLmodel, tagged after
        every other file's), not from the files present: an upgrade that crashed after
        uploading its files and before tagging them is done again in full. It runs under
        the model's audit lock, so that two upgrades at once do not leave one's files under
        the other's digests."""
        with self._audit_lock(name):
            return self._add_mlflow_flavor(name, ref)

    def _add_mlflow_flavor(self, name: str, ref: str | int) -> list[str]:
        from raymlops.model.artifacts import MANIFEST, sha256_file, write_json
        from raymlops.model.features import Preprocessor
        from raymlops.model.predictor import PREPROCESSING
        from raymlops.model.pyfunc import MLMODEL, input_types, save_mlflow_model, version_example

        folder, info = self.download(name, ref)  # digests verified
        if MLMODEL in info.digests:
            return []
        mv = self._resolve(name, info.version)
        run_uri = self.client.get_run(mv.run_id).info.artifact_uri if mv.run_id else None
        if not run_uri or not mv.source.startswith(f"{run_uri}/"):
            raise RegistryError(
                f"{name} v{info.version}: its source {mv.source} is not under its run's "
                "artifacts; raymlops cannot add files next to it"
            )

        def read(file: str) -> dict[str, Any]:
            path = folder / file
            data = json.loads(path.read_text()) if path.is_file() else {}
            return data if isinstance(data, dict) else {}

        prep = Preprocessor.from_dict(read(PREPROCESSING))
        data, config, profile = read("dataset.json"), read("config.json"), read("profile.json")
        schema = {str(k): str(v) for k, v in (data.get("schema") or {}).items()}
        optional = bool((config.get("serve") or {}).get("allow_missing", True))
        types = input_types(prep, schema, profile, optional)
        fmt = str((config.get("data") or {}).get("format", "auto"))
        kind = str((config.get("registry") or {}).get("input_example", "profile"))
        example = version_example(prep, types, profile, str(data.get("source", "")), fmt, kind)
        with tempfile.TemporaryDirectory(prefix="raymlops-flavor-") as tmp:
            staged = Path(tmp)
            added = save_mlflow_model(staged / "model", prep, types, example, optional)
            new = {file: sha256_file(staged / "model" / file) for file in added}
            write_json(staged / "model" / MANIFEST, {**info.digests, **new})
            self.client.log_artifacts(
                mv.run_id, str(staged / "model"), artifact_path=mv.source[len(run_uri) + 1 :]
            )
        for file in sorted(new, key=lambda f: f == MLMODEL):  # MLmodel's last: see above
            self.set_version_tag(name, info.version, f"{_DIGEST_TAG}{file}", new[file])
        self.set_version_tag(name, info.version, "raymlops.mlflow_flavor", "added")
        return added

    # ------------------------------------------------------------------ alias history
    @contextmanager
    def _audit_lock(self, name: str) -> Iterator[None]:
        """Serialise alias changes of one model (read current, move, record) across every
        writer of this store: a file lock for the embedded SQLite store, a lock in MLflow
        itself for a tracking server (`raymlops.registry.lock`)."""
        with alias_lock(self.client, self.tracking_uri, self.home, name):
            yield

    @contextmanager
    def log_compaction_lock(self, name: str) -> Iterator[None]:
        """Held during each merge of model `name`'s prediction log
        (`raymlops.data.log_compaction`), by every compactor of it wherever it runs: the
        alias lock's mechanism under its own name."""
        with alias_lock(self.client, self.tracking_uri, self.home, f"{name}--prediction-log"):
            yield

    def alias_target(self, name: str, alias: str) -> int | None:
        """The version an alias points to now, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return int(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int | None,
        *,
        action: str,
        reason: str = "",
        by: str | None = None,
        details: dict[str, Any] | None = None,
        expected_from: int | str | None = "any",
    ) -> AliasEvent:
        """Move `alias` to `version` (None clears it) and append the change to the history.

        `expected_from` makes the move conditional (compare-and-set): if the alias no longer
        points where the caller saw it, RegistryError is raised and nothing changes.
        """
        with self._audit_lock(name):
            return self._move_alias(
                name, alias, version, action, reason, by, details, expected_from=expected_from
            )

    def _move_alias(
        self,
        name: str,
        alias: str,
        version: int | None,
        action: str,
        reason: str = "",
        by: str | None = None,
        details: dict[str, Any] | None = None,
        expected_from: int | str | None = "any",
    ) -> AliasEvent:
        """`set_alias`'s work, the alias lock already held.

        The event is written first as an intent (its run still RUNNING), then the alias
        moves, then the event is marked done: a writer killed between any two steps leaves
        either no move and an intent that the next writer marks aborted, or a move whose
        event is already in the history (`_settle_intents`). Never a moved alias without
        its history."""
        self._settle_intents(name)
        current = self.alias_target(name, alias)
        if expected_from != "any" and current != expected_from:
            raise RegistryError(
                f"alias '{alias}' of '{name}' moved to "
                f"{'v' + str(current) if current is not None else 'nothing'} meanwhile"
            )
        if version is not None:
            self._resolve(name, version)
        event = self._append_event(
            name, alias, action, current, version, reason, by, details, moved=True
        )
        if version is None:
            if current is not None:
                self.client.delete_registered_model_alias(name, alias)
        else:
            self.client.set_registered_model_alias(name, alias, str(version))
        assert event.run_id is not None
        self.client.set_terminated(event.run_id, status="FINISHED")
        return event

    def _settle_intents(self, name: str) -> None:
        """Finish what a writer killed inside `_move_alias` left (the alias lock held): an
        intent whose alias points where it says moved, and is marked done; any other was
        not carried out, and is marked aborted (left out of the history)."""
        for event, state in self._events(name):
            if state == _MOVED:
                assert event.run_id is not None
                self.client.set_terminated(event.run_id, status="FINISHED")
            elif state == _NOT_MOVED:
                assert event.run_id is not None
                self.client.set_tag(event.run_id, f"{_AUDIT_TAG}state", "aborted")
                self.client.set_terminated(event.run_id, status="FAILED")

    def record_event(
        self,
        name: str,
        alias: str,
        action: str,
        *,
        from_version: int | None = None,
        to_version: int | None = None,
        reason: str = "",
        by: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AliasEvent:
        """Append an event that moves no MLflow alias (an approval, a gate result, a canary
        start or an automatic rollback of live traffic) to the model's history."""
        with self._audit_lock(name):
            return self._append_event(
                name, alias, action, from_version, to_version, reason, by, details
            )

    def _append_event(
        self,
        name: str,
        alias: str,
        action: str,
        from_version: int | None,
        to_version: int | None,
        reason: str,
        by: str | None,
        details: dict[str, Any] | None,
        moved: bool = False,
    ) -> AliasEvent:
        client = self.client
        sequence = len(self.alias_history(name)) + 1
        actor = by or default_actor()
        now = time.time()
        tags = {
            f"{_AUDIT_TAG}model": name,
            f"{_AUDIT_TAG}alias": alias,
            f"{_AUDIT_TAG}action": action,
            f"{_AUDIT_TAG}from_version": "" if from_version is None else str(from_version),
            f"{_AUDIT_TAG}to_version": "" if to_version is None else str(to_version),
            f"{_AUDIT_TAG}by": actor,
            f"{_AUDIT_TAG}reason": reason,
            f"{_AUDIT_TAG}sequence": str(sequence),
            f"{_AUDIT_TAG}details": json.dumps(details or {}, sort_keys=True, default=str),
            f"{_AUDIT_TAG}moved": "true" if moved else "false",
            "mlflow.user": actor,
        }
        run = client.create_run(
            self.experiment_id(AUDIT_EXPERIMENT),
            start_time=int(now * 1000),
            tags=tags,
            run_name=f"{name}:{alias}:{action}",
        )
        if not moved:  # a move's event stays an intent until the alias has moved
            client.set_terminated(run.info.run_id, status="FINISHED", end_time=int(now * 1000))
        return AliasEvent(
            name,
            alias,
            action,
            from_version,
            to_version,
            now,
            actor,
            reason,
            sequence,
            dict(details or {}),
            run.info.run_id,
            moved,
        )

    def alias_history(self, name: str) -> list[AliasEvent]:
        """Every recorded alias change and lifecycle decision of a model, oldest first (a
        move whose writer died before the alias moved is not in it)."""
        return [event for event, state in self._events(name) if state in (_DONE, _MOVED)]

    def _events(self, name: str) -> list[tuple[AliasEvent, str]]:
        """Every audit event of a model, oldest first, with its state: done, aborted, or
        for an intent whose writer has not finished it, whether its alias moved."""
        client = self.client
        experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
        if experiment is None:
            return []
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{_AUDIT_TAG}model` = '{name}'",
            max_results=50000,
        )
        events = []
        for run in runs:
            event = _event(name, run)
            if run.data.tags.get(f"{_AUDIT_TAG}state") == "aborted":
                state = _ABORTED
            elif run.info.status != "RUNNING" or not event.moved:
                state = _DONE  # a non-move event is whole once its run exists
            else:
                moved = self.alias_target(name, event.alias) == event.to_version
                state = _MOVED if moved else _NOT_MOVED
            events.append((event, state))
        return sorted(events, key=lambda pair: (pair[0].sequence, pair[0].timestamp))


#: States of an audit event (see `Registry._events`).
_DONE, _ABORTED, _MOVED, _NOT_MOVED = "done", "aborted", "intent-moved", "intent-not-moved"


def _event(name: str, run: Any) -> AliasEvent:
    """The alias event an audit run records."""
    tags = run.data.tags

    def version(text: str | None) -> int | None:
        return int(text) if text else None

    return AliasEvent(
        model=name,
        alias=tags.get(f"{_AUDIT_TAG}alias", ""),
        action=tags.get(f"{_AUDIT_TAG}action", ""),
        from_version=version(tags.get(f"{_AUDIT_TAG}from_version")),
        to_version=version(tags.get(f"{_AUDIT_TAG}to_version")),
        timestamp=run.info.start_time / 1000,
        by=tags.get(f"{_AUDIT_TAG}by", ""),
        reason=tags.get(f"{_AUDIT_TAG}reason", ""),
        sequence=int(tags.get(f"{_AUDIT_TAG}sequence", "0")),
        details=json.loads(tags.get(f"{_AUDIT_TAG}details", "{}")),
        run_id=run.info.run_id,
        moved=tags.get(f"{_AUDIT_TAG}moved") == "true",
    )


def load_predictor(
    name: str,
    alias_or_version: str | int | None = None,
    tracking_uri: str | None = None,
    home: str | Path | None = None,
) -> Predictor:
    """Load a registered model version by alias (default 'champion') or version number, or
    by one URI, `load_predictor("models:/NAME@ALIAS")` or `models:/NAME/VERSION`: the
    verified `Predictor` of `Registry(tracking_uri, home).load_predictor(name, ref)`."""
    from raymlops.core.model_uri import resolve_model_ref

    name, ref = resolve_model_ref(name, alias_or_version, default=CHAMPION)
    registry = Registry(tracking_uri=tracking_uri, home=home)
    return registry.load_predictor(name, CHAMPION if ref is None else ref)


#: Characters MLflow accepts in a metric key; any other becomes '_'.
_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /:]")
#: The longest metric key MLflow's stores accept.
_METRIC_KEY_MAX = 250


def metric_key(*parts: str, sep: str = ".") -> str:
    """An MLflow metric key from `parts` (feature names, versions, roles): each part's
    disallowed characters replaced, joined by `sep`, cut to MLflow's length limit."""
    return sep.join(_METRIC_NAME.sub("_", p) for p in parts)[:_METRIC_KEY_MAX]
