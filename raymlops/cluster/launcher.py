"""Where the work runs: in-process on a local Ray started for the duration of a command,
on an existing cluster (`--address ray://…`), or as Ray jobs submitted to a cluster's job API
(`--address http://head:8265`), each step a `raymlops <step>` command in the job."""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raymlops.core.errors import UserInputError
from raymlops.core.home import home_dir
from raymlops.core.ray_session import cluster_resources, ray_session, use_token_if_available
from raymlops.core.report import say
from raymlops.core.storage import ENV_STORAGE, is_local
from raymlops.loop.steps import PIPELINE_STEPS

if TYPE_CHECKING:
    from raymlops.core.config import PipelineConfig

__all__ = [
    "PIPELINE_STEPS",
    "JobLauncher",
    "JobOutcome",
    "cluster_resources",
    "is_job_address",
    "ray_session",
    "run_pipeline_as_jobs",
]


def is_job_address(address: str | None) -> bool:
    """Whether `--address` names a Ray job API (http[s]://…) rather than a cluster to join."""
    return bool(address) and str(address).startswith(("http://", "https://"))


# --------------------------------------------------------------------------- Ray jobs

#: Steps that `raymlops submit` accepts: a `raymlops <step>` command run as a Ray job.
#: (batch is not a pipeline step: it needs an input and an output of its own.)
SUBMITTABLE_STEPS: tuple[str, ...] = (
    "train",
    "run",
    "batch",
    "monitor",
    "serve",
    "retrain",
    "watch",
)
#: Environment variable through which a job learns its own submission id (recorded in MLflow).
SUBMISSION_ID_ENV = "RAYMLOPS_SUBMISSION_ID"
_FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "RAYMLOPS_TUNE_STORAGE",
    ENV_STORAGE,
    "MLFLOW_S3_ENDPOINT_URL",
    "RAYMLOPS_DEBUG",
    "RAYMLOPS_VERBOSE",
)
_UPLOAD_EXCLUDES = [".git", ".venv", ".raymlops", "__pycache__", "*.pyc", "benchmarks/.data"]
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class JobOutcome:
    """How a submitted step ended: its last submission id, status, attempts and log tail."""

    step: str
    submission_id: str
    status: str
    attempts: int
    log_tail: str = ""
    submission_ids: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _this_machine() -> tuple[str, set[str]]:
    """This machine's host name and every address of its network interfaces."""
    import psutil

    addresses = {a.address.split("%")[0] for nics in psutil.net_if_addrs().values() for a in nics}
    return socket.gethostname(), addresses


def _node_is_here(node: dict[str, Any], hostname: str, addresses: set[str]) -> bool:
    """Whether a node of a cluster (its dashboard summary) runs on this machine: the same
    host name and one of this machine's addresses. A `ray dashboard` tunnel makes a remote
    cluster's address 127.0.0.1 too; its nodes still name their own hosts."""
    return node.get("hostname") == hostname and str(node.get("ip", "")) in addresses


def storage_settings(config: PipelineConfig | None, step: str) -> dict[str, str | None]:
    """The storage a job of `step` uses, by the config key that sets it (its effective
    value: defaults resolved): what must be shared when the job runs on other machines."""
    from raymlops.core.storage import join, storage_root

    tracking = os.environ.get("MLFLOW_TRACKING_URI")
    if config is None:
        return {"registry.tracking_uri": tracking}
    settings: dict[str, str | None] = {
        "registry.tracking_uri": config.registry.tracking_uri or tracking
    }
    shared = storage_root(config.storage)
    if step in ("run", "train", "retrain", "watch"):
        tune = config.tune.storage or os.environ.get("RAYMLOPS_TUNE_STORAGE")
        settings["tune.storage"] = tune or (join(shared, "tune") if shared else None)
    if step in ("run", "serve", "monitor", "retrain", "watch"):
        log = config.serve.prediction_log.uri
        enabled = config.serve.prediction_log.enabled or step == "monitor"
        if enabled:
            settings["serve.prediction_log.uri"] = log or (
                join(shared, "predictions") if shared else None
            )
    if step == "run":
        settings["storage"] = shared
    return settings


class JobLauncher:
    """Submits raymlops steps as Ray jobs to a cluster's job API (`http://head:8265`).

    Authentication follows Ray's own CLI: with token auth on (the default of Ray 2.60
    clusters), the token comes from $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token; a missing or wrong one is a UserInputError (exit 2).
    """

    def __init__(self, address: str, home: str | Path | None = None) -> None:
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient

        self.address = address
        self.home = home_dir(home)
        self._here: bool | None = None
        use_token_if_available()
        try:
            self.client = JobSubmissionClient(address)
        except AuthenticationError as exc:
            raise UserInputError(
                f"Ray rejected the credentials for {address}: {_one_line(str(exc))} "
                "(set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token)"
            ) from None
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserInputError(
                f"cannot reach the Ray job API at {address}: {_one_line(str(exc))}"
            ) from None

    def runtime_env(
        self, working_dir: str | Path | None, submission_id: str, ship_raymlops: bool = True
    ) -> dict[str, Any]:
        """The job's runtime environment: the working dir (configs, local data), this
        raymlops package, and the settings that point the job at the same registry."""
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        if self.is_this_machine():
            # One machine: the jobs share this home (the embedded registry, run folders).
            # On other machines this path means nothing: each node keeps its own.
            env["RAYMLOPS_HOME"] = str(self.home)
        env[SUBMISSION_ID_ENV] = submission_id
        # Who submits: the job's driver records MLflow runs and registry events as this
        # user, not as the account the cluster's processes run under.
        from raymlops.core.environment import default_actor

        env["RAYMLOPS_USER"] = default_actor()
        env["PYTHONUNBUFFERED"] = "1"
        runtime: dict[str, Any] = {"env_vars": env}
        if working_dir is not None:
            runtime["working_dir"] = str(working_dir)
            runtime["excludes"] = list(_UPLOAD_EXCLUDES)
        if ship_raymlops:
            # The raymlops package folder (this file is raymlops/cluster/launcher.py).
            runtime["py_modules"] = [str(Path(__file__).resolve().parents[1])]
        return runtime

    def is_this_machine(self) -> bool:
        """Whether every node of the cluster runs on this machine (then a local folder and
        the embedded SQLite registry are storage its nodes share). Asked of the cluster
        itself (its nodes' host names and addresses), never read from the address's text."""
        if self._here is None:
            nodes = self._node_summaries()
            hostname, addresses = _this_machine()
            self._here = bool(nodes) and all(_node_is_here(n, hostname, addresses) for n in nodes)
        return self._here

    def _node_summaries(self, wait_s: float = 20.0) -> list[dict[str, Any]]:
        """Every alive node's host name and address, as the cluster's dashboard reports them
        (a node's own agent reports them a few seconds after it starts: wait for one that
        names each node the GCS knows). `[{}]` (an unknown node) when the cluster cannot
        say: then it is treated as not this machine."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                alive = self.client._do_request("GET", "/api/v0/nodes?detail=false&limit=1000")
                expected = sum(
                    1 for n in alive.json()["data"]["result"]["result"] if n["state"] == "ALIVE"
                )
                response = self.client._do_request("GET", "/nodes?view=summary")
                nodes: list[dict[str, Any]] = response.json()["data"]["summary"]
            except Exception:  # a cluster that cannot say: assume the worst
                return [{}]
            if nodes and len(nodes) >= expected:
                return nodes
            if time.monotonic() > deadline:
                return nodes + [{}] * max(expected - len(nodes), 1)
            time.sleep(0.5)

    def check_storage(self, settings: dict[str, str | None]) -> None:
        """Exit 2 (UserInputError) before anything is submitted when a cluster that is not
        this machine would be handed storage only this machine has: `settings` maps each
        config key (or variable) the jobs will use to its value (a path, a URI, None)."""
        if self.is_this_machine():
            return
        for key, value in settings.items():
            if key == "registry.tracking_uri":
                if not value or value.startswith(("sqlite:", "file:")) or "://" not in value:
                    shown = value or "the embedded SQLite file"
                    raise UserInputError(
                        f"{self.address} is a cluster of other machines but the registry "
                        f"({shown}) is on this machine's disk; set MLFLOW_TRACKING_URI (or "
                        "registry.tracking_uri) to the cluster's MLflow server"
                    )
            elif not value or is_local(value):
                raise UserInputError(
                    f"{self.address} is a cluster of other machines but {key} "
                    f"({value or 'unset: a folder under RAYMLOPS_HOME'}) is on this machine's "
                    f"disk; set storage (or ${ENV_STORAGE}) to an object store URI, "
                    "e.g. s3://bucket/raymlops"
                )

    def check_data(
        self, config: PipelineConfig | None, step: str, working_dir: str | Path | None
    ) -> None:
        """Exit 2 (UserInputError) before anything is submitted when the job would read a
        `data.path` it cannot reach: a relative path must be inside the working dir that
        travels with the job, and an absolute path on this machine's disk only works on a
        cluster that is this machine. URIs and bundled datasets always pass."""
        if config is None or step not in ("run", "train", "retrain", "watch"):
            return
        path = config.data.path
        if path.startswith("sklearn:") or not is_local(path):
            return
        local = Path(path.removeprefix("file://"))
        if not local.is_absolute():
            if working_dir is not None and not (Path(working_dir) / local).exists():
                raise UserInputError(
                    f"data.path {path} is not in the working dir ({Path(working_dir).resolve()}) "
                    "that travels with the job; give a path inside it or an object store URI"
                )
            return
        if not self.is_this_machine():
            raise UserInputError(
                f"{self.address} is a cluster of other machines but data.path ({path}) is on "
                "this machine's disk; give a path relative to the working dir (it travels with "
                "the job) or an object store URI, e.g. s3://bucket/data/"
            )

    def submit(
        self,
        step: str,
        args: list[str],
        *,
        working_dir: str | Path | None = ".",
        wait: bool = True,
        stream: bool = True,
        max_retries: int = 0,
        ship_raymlops: bool = True,
        config: PipelineConfig | None = None,
        echo: bool = True,
        label: str | None = None,
    ) -> JobOutcome:
        """Run `raymlops STEP ARGS` as a Ray job; with `wait`, stream its logs and return
        its final status, resubmitting (new submission id) up to `max_retries` times.
        `config` is the step's config: its storage settings are checked against the cluster
        first (`check_storage`); `label` names the job (submission id, metadata, outcome)
        when it is not the step itself."""
        if step not in SUBMITTABLE_STEPS:
            raise UserInputError(
                f"unknown step '{step}' (submittable: {', '.join(SUBMITTABLE_STEPS)})"
            )
        self.check_storage(storage_settings(config, step))
        self.check_data(config, step, working_dir)
        # `python` as the cluster's nodes resolve it, like any `ray job submit -- python …`.
        entrypoint = shlex.join(["python", "-m", "raymlops.cli", step, *args])
        label = label or step
        ids: list[str] = []
        outcome: JobOutcome | None = None
        for attempt in range(1, max_retries + 2):
            submission_id = f"raymlops-{label}-{uuid.uuid4().hex[:10]}"
            self.client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env=self.runtime_env(working_dir, submission_id, ship_raymlops),
                metadata={"raymlops_step": label, "attempt": str(attempt)},
            )
            ids.append(submission_id)
            if echo:
                say(f"▸ submitted {label} as Ray job {submission_id} to {self.address}")
            if not wait:
                return JobOutcome(label, submission_id, "PENDING", attempt, "", ids)
            status = self.wait(submission_id, stream=stream and echo)
            tail = "" if status == "SUCCEEDED" else self.log_tail(submission_id)
            outcome = JobOutcome(label, submission_id, status, attempt, tail, list(ids))
            if outcome.succeeded:
                break
            if echo and attempt <= max_retries:
                say(
                    f"  job {submission_id} {status.lower()}; retrying ({attempt} of {max_retries})"
                )
        assert outcome is not None
        return outcome

    def wait(self, submission_id: str, stream: bool = True, poll_s: float = 0.5) -> str:
        """Block until the job ends (printing its logs as they come) and return its status."""
        if stream:
            asyncio.run(self._stream(submission_id))
        while True:
            status = str(self.client.get_job_status(submission_id).value)
            if status in _TERMINAL:
                return status
            time.sleep(poll_s)

    async def _stream(self, submission_id: str) -> None:
        async for chunk in self.client.tail_job_logs(submission_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    def log_tail(self, submission_id: str, lines: int = 25) -> str:
        """The last lines of a job's log."""
        return "\n".join(self.client.get_job_logs(submission_id).rstrip().splitlines()[-lines:])

    def list_jobs(self) -> list[dict[str, Any]]:
        """Jobs known to the cluster, newest first."""
        rows = []
        for job in self.client.list_jobs():
            rows.append(
                {
                    "submission_id": job.submission_id,
                    "status": str(job.status.value),
                    "step": (job.metadata or {}).get("raymlops_step", ""),
                    "entrypoint": job.entrypoint,
                    "start_time": (job.start_time or 0) / 1000,
                    "end_time": (job.end_time or 0) / 1000 or None,
                }
            )
        return sorted(rows, key=lambda r: -r["start_time"])

    def logs(self, submission_id: str) -> str:
        """A job's whole log."""
        try:
            return str(self.client.get_job_logs(submission_id))
        except RuntimeError as exc:
            raise UserInputError(f"no job {submission_id}: {_one_line(str(exc))}") from None

    def stop(self, submission_id: str) -> bool:
        """Ask the cluster to stop a job; False if it had already ended."""
        try:
            return bool(self.client.stop_job(submission_id))
        except RuntimeError as exc:
            raise UserInputError(f"no job {submission_id}: {_one_line(str(exc))}") from None


def run_pipeline_as_jobs(
    address: str,
    args: list[str],
    *,
    config: PipelineConfig,
    home: str | Path | None = None,
    working_dir: str | Path | None = ".",
    max_retries: int = 0,
    train_only: bool = False,
    keep_serving: bool = False,
    echo: bool = True,
) -> list[JobOutcome]:
    """`raymlops run --address http://…`: each step of the main job as its own Ray job, in
    order, stopping at the first failure (whose log tail the outcome carries). The steps hand
    their state over in a run folder under the shared `storage` (an object store: each job
    may run on another node), or under the home on a cluster that is this machine; every
    job id is recorded on an MLflow run. After a failure, an endpoint the chain started
    is stopped by one more job (unless `keep_serving`)."""
    launcher = JobLauncher(address, home)
    if train_only:
        steps: list[tuple[str, str, list[str]]] = [("train", "train", args)]
    else:
        work = _chain_location(config, launcher)
        keep = ["--keep-serving"] if keep_serving else []
        steps = [
            (
                step,
                "run",
                ["--step", step, "--work", str(work), *args, *(keep * (step == "finish"))],
            )
            for step in PIPELINE_STEPS
        ]
    launcher.check_storage(storage_settings(config, "run" if not train_only else "train"))
    record = _ChainRecord(config, launcher.home, address)
    outcomes: list[JobOutcome] = []
    try:
        for label, step, step_args in steps:
            outcome = launcher.submit(
                step,
                step_args,
                working_dir=working_dir,
                max_retries=max_retries,
                config=config,
                echo=echo,
                label=label,
            )
            outcomes.append(outcome)
            record.job(outcome)
            if not outcome.succeeded:
                break
        failed = bool(outcomes) and not outcomes[-1].succeeded
        served = any(o.step == "serve" and o.succeeded for o in outcomes)
        if failed and served and not keep_serving and outcomes[-1].step != "finish":
            if echo:
                say("▸ stopping the endpoint this chain deployed")
            cleanup = launcher.submit(
                "run", steps[-1][2], working_dir=working_dir, config=config,
                echo=echo, label="finish",
            )  # fmt: skip
            record.job(cleanup)
    finally:
        record.close(bool(outcomes) and all(o.succeeded for o in outcomes))
    return outcomes


def _chain_location(config: PipelineConfig, launcher: JobLauncher) -> str:
    """Where the chain's steps hand over their state: under the shared storage (each job
    may run on another node), or under the home on a cluster that is this machine."""
    from raymlops.core.storage import join, storage_root

    name = f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    shared = storage_root(config.storage)
    if shared:
        return join(shared, "runs", name)
    return str(launcher.home.resolve() / "runs" / name)


class _ChainRecord:
    """The MLflow run of one job chain: every step's submission ids and status as tags."""

    def __init__(self, config: PipelineConfig, home: Path, address: str) -> None:
        from raymlops.registry.store import Registry

        self.registry = Registry.from_config(config, home)
        self.run_id = self.registry.start_run(
            f"{config.name}-jobs-{time.strftime('%Y%m%d-%H%M%S')}",
            {
                "raymlops.kind": "job-chain",
                "raymlops.job_address": address,
                "raymlops.model": config.registry.model_name,
            },
            experiment=config.registry.experiment,
        )

    def job(self, outcome: JobOutcome) -> None:
        """Tag the run with one step's submission ids and final status."""
        self.registry.log(
            self.run_id,
            tags={
                f"raymlops.job.{outcome.step}": ",".join(outcome.submission_ids),
                f"raymlops.job.{outcome.step}.status": outcome.status,
            },
        )

    def close(self, succeeded: bool) -> None:
        self.registry.end_run(self.run_id, succeeded)
