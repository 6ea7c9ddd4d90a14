"""Hone's Airflow DAG: compress a model for device classes, wait, gate, deploy the winners.

``hone_compress`` drives a Hone coordinator through its HTTP API (docs/airflow.md):

- ``submit``: ``POST /api/v1/pipelines`` with a client-given id, derived from the DAG run id and
  the request, so a retried or re-run task gets the pipeline it created before (Hone answers
  200 with it instead of 201).
- ``wait``: polls ``GET /api/v1/pipelines/{id}`` until the pipeline is ``done``; fails with
  Hone's error when it is ``failed`` or ``cancelled``, or after ``pipeline_timeout_s``.
- ``check_gate``: fails with every class's reason when no class has a winner.
- ``deploy``: one deployment per class winner (``POST /api/v1/deployments``, id
  ``{pipeline}-{class}``) to that class's devices; waits for each to be ``done``, fails with
  Hone's reason when one rolls back or fails.

The coordinator's URL and token come from an Airflow connection (``hone_coordinator`` unless the
``conn_id`` param says otherwise): host, port and schema (``http`` or ``https``) make the URL,
the password (or the extra ``token``) is the bearer token; the HTTP provider's ``HttpHook`` opens
the session, so its extras (``timeout``, ``verify``, ``proxies``...) apply.

Failures that a retry cannot change (an HTTP 4xx, a failed pipeline, no winner, a rolled-back
deployment, a timeout) raise ``AirflowFailException``: the task fails at once with the reason.
Others (the coordinator unreachable, an HTTP 5xx) raise ``AirflowException`` and the task is
retried; the client-given ids make every retry land on the same pipeline and deployments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from datetime import timedelta
from typing import Any

from airflow.providers.http.hooks.http import HttpHook
from requests import RequestException
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

log = logging.getLogger(__name__)

DAG_ID = "hone_compress"

# Pipeline request fields the DAG's params set; anything else goes in the `request` param.
REQUEST_KEYS = (
    "model",
    "data",
    "devices",
    "max_accuracy_drop",
    "min_fidelity",
    "latency_budget_ms",
    "memory_budget_mib",
    "methods",
    "prune_grid",
)

PIPELINE_ENDED = ("done", "failed", "cancelled")
DEPLOYMENT_ENDED = ("done", "rolled_back", "failed")


class Hone:
    """A client of Hone's API over the HTTP provider's session for the connection ``conn_id``."""

    def __init__(self, conn_id: str) -> None:
        hook = HttpHook(method="GET", http_conn_id=conn_id)
        conn = hook.get_connection(conn_id)
        extra = conn.extra_dejson or {}
        session = hook.get_conn()
        # The hook sends the connection's extras as headers and a login as basic auth: the
        # token goes in a bearer header only.
        session.headers.pop("token", None)
        session.auth = None
        token = conn.password or extra.get("token")
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        self.conn_id = conn_id
        self.base = hook.base_url.rstrip("/")
        self.session = session
        self.timeout = float(extra.get("timeout") or 30)
        self.has_token = bool(token)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        """(status, JSON body) of a 2xx answer; raises with Hone's error otherwise."""
        url = f"{self.base}{path}"
        try:
            r = self.session.request(method, url, json=body, timeout=self.timeout)
        except RequestException as e:  # refused, timed out, TLS...: worth a retry
            raise AirflowException(f"{method} {url}: cannot reach Hone: {e}") from e
        try:
            value = r.json()
        except ValueError:
            value = None
        if 200 <= r.status_code < 300:
            if value is None:
                raise AirflowException(f"{method} {url}: HTTP {r.status_code} without JSON")
            return r.status_code, value
        error = value.get("error") if isinstance(value, dict) else None
        message = f"{method} {path}: HTTP {r.status_code} from Hone: {error or r.text[:500]}"
        if r.status_code == 401:
            message += (
                f" (the token is the password, or the extra `token`, of the Airflow connection "
                f"`{self.conn_id}`{'' if self.has_token else ', which has none'})"
            )
        if r.status_code >= 500:
            raise AirflowException(message)
        raise AirflowFailException(message)

    def get(self, path: str) -> Any:
        return self.call("GET", path)[1]

    def post(self, path: str, body: dict) -> tuple[int, Any]:
        return self.call("POST", path, body)


def pipeline_request(params: dict) -> dict:
    """The body of ``POST /api/v1/pipelines`` (without its id) from the DAG's params."""
    body = dict(params.get("request") or {})
    for key in REQUEST_KEYS:
        value = params.get(key)
        if value is not None and value != "":
            body[key] = value
    if isinstance(body.get("devices"), str):
        body["devices"] = [body["devices"]]  # Hone splits `rpi4,x86-vm-2core` itself
    missing = [k for k in ("model", "data", "devices") if not body.get(k)]
    if missing:
        raise AirflowFailException(
            f"the DAG run's conf needs {', '.join(f'`{k}`' for k in missing)} "
            "(see docs/airflow.md)"
        )
    body.pop("id", None)
    return body


def pipeline_id(dag_id: str, run_id: str, body: dict) -> str:
    """The pipeline's id: the same for every try of a DAG run with the same request."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{dag_id}\n{run_id}\n{canonical}".encode()).hexdigest()
    return f"af-{digest[:24]}"


def deployment_id(pipeline: str, klass: str) -> str:
    """``{pipeline}-{class}`` (the id Hone's own `compress --deploy` gives), within Hone's rules."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", klass)
    did = f"{pipeline}-{name}"
    if len(did) > 64:
        did = f"{pipeline}-{hashlib.sha256(klass.encode()).hexdigest()[:12]}"
    return did


@dag(
    dag_id=DAG_ID,
    schedule=None,
    catchup=False,
    tags=["hone"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    params={
        "model": Param(
            "", type="string", description="Registered model: id, name or digest prefix"
        ),
        "data": Param(
            "",
            type=["string", "object"],
            description="Data spec: a built-in set or a path under the coordinator's import folder",
        ),
        "devices": Param([], type=["array", "string"], description="Device classes (profiles)"),
        "min_fidelity": Param(None, type=["null", "number"]),
        "max_accuracy_drop": Param(None, type=["null", "number"]),
        "latency_budget_ms": Param(None, type=["null", "number"]),
        "memory_budget_mib": Param(None, type=["null", "number"]),
        "methods": Param(None, type=["null", "array"]),
        "prune_grid": Param(None, type=["null", "object"]),
        "request": Param(
            {}, type="object", description="Other pipeline request fields (docs/pipeline.md)"
        ),
        "pipeline_id": Param(
            None, type=["null", "string"], description="Default: derived from the DAG run"
        ),
        "deploy": Param(
            {},
            type=["null", "object"],
            description="Deployment settings (docs/deploy.md); null: do not deploy",
        ),
        "conn_id": Param("hone_coordinator", type="string"),
        "pipeline_timeout_s": Param(7200, type="number"),
        "deploy_timeout_s": Param(1800, type="number"),
        "poll_s": Param(10, type="number"),
    },
)
def hone_compress():
    @task
    def submit() -> str:
        ctx = get_current_context()
        params = ctx["params"]
        body = pipeline_request(params)
        pid = params.get("pipeline_id") or pipeline_id(DAG_ID, ctx["run_id"], body)
        body["id"] = pid
        hone = Hone(params["conn_id"])
        status, p = hone.post("/api/v1/pipelines", body)
        if status == 201:
            log.info("created pipeline %s on %s", pid, hone.base)
        else:
            state, stage = p["state"], p["stage"]
            log.info("pipeline %s exists already (%s, %s): a retry reuses it", pid, state, stage)
        return pid

    @task
    def wait(pid: str) -> dict:
        params = get_current_context()["params"]
        hone = Hone(params["conn_id"])
        timeout = float(params["pipeline_timeout_s"])
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            p = hone.get(f"/api/v1/pipelines/{pid}")
            state, stage = p["state"], p["stage"]
            if (state, stage) != seen:
                log.info("pipeline %s: %s (stage %s)", pid, state, stage)
                seen = (state, stage)
            if state in PIPELINE_ENDED:
                break
            if time.monotonic() > deadline:
                raise AirflowFailException(
                    f"pipeline {pid} is still {state} (stage {stage}) after {timeout:g} s; it "
                    "goes on in Hone: clear this task to wait again, or cancel it "
                    f"(POST /api/v1/pipelines/{pid}/cancel)"
                )
            time.sleep(float(params["poll_s"]))
        if state != "done":
            why = p.get("error") or "no reason given"
            raise AirflowFailException(f"Hone pipeline {pid} {state} at stage {stage}: {why}")
        result = p.get("result") or {}
        classes = []
        for c in result.get("classes", []):
            w = c.get("winner")
            keep = ("model", "name", "runtime", "p50_ms", "fidelity", "accuracy")
            classes.append(
                {
                    "class": c["class"],
                    "reason": c.get("reason", ""),
                    "closest": c.get("closest", []),
                    "winner": None if w is None else {k: w.get(k) for k in keep},
                }
            )
            log.info("class %s: %s", c["class"], c.get("reason", ""))
        return {
            "pipeline": pid,
            "latency_budget_ms": (result.get("constraints") or {}).get("latency_budget_ms"),
            "classes": classes,
        }

    @task
    def check_gate(summary: dict) -> dict:
        winners = [c for c in summary["classes"] if c["winner"]]
        losers = [c for c in summary["classes"] if not c["winner"]]
        reasons = "; ".join(
            f"{c['class']}: {c['reason']}"
            + (f" (closest: {', '.join(c['closest'][:3])})" if c["closest"] else "")
            for c in losers
        )
        if not winners:
            raise AirflowFailException(
                f"pipeline {summary['pipeline']} chose no model for any class: "
                f"{reasons or 'the result has no classes'}"
            )
        if losers:
            log.warning("classes without a winner, not deployed: %s", reasons)
        for c in winners:
            w = c["winner"]
            log.info("class %s: winner %s (%s)", c["class"], w["model"], w["name"])
        return {**summary, "classes": winners}

    @task
    def deploy(gated: dict) -> list:
        params = get_current_context()["params"]
        settings = params.get("deploy")
        if settings is None:
            raise AirflowSkipException("deploy is off (the conf's `deploy` is null)")
        hone = Hone(params["conn_id"])
        pid = gated["pipeline"]
        ids = {}
        for c in gated["classes"]:
            body = dict(settings)
            body.update(
                id=deployment_id(pid, c["class"]),
                model=c["winner"]["model"],
                devices=f"profile:{c['class']}",
                pipeline=pid,
            )
            if body.get("latency_budget_ms") is None and gated.get("latency_budget_ms"):
                body["latency_budget_ms"] = gated["latency_budget_ms"]
            status, d = hone.post("/api/v1/deployments", body)
            verb = "created" if status == 201 else "exists already, reused:"
            log.info("deployment %s %s %s to class %s", d["id"], verb, body["model"], c["class"])
            ids[c["class"]] = d["id"]
        timeout = float(params["deploy_timeout_s"])
        deadline = time.monotonic() + timeout
        ended: dict[str, dict] = {}
        while len(ended) < len(ids):
            for klass, did in ids.items():
                if klass in ended:
                    continue
                d = hone.get(f"/api/v1/deployments/{did}")
                if d["state"] in DEPLOYMENT_ENDED:
                    ended[klass] = d
                    log.info("deployment %s: %s %s", did, d["state"], d.get("reason") or "")
            if len(ended) < len(ids):
                if time.monotonic() > deadline:
                    waiting = [f"{ids[k]} ({k})" for k in ids if k not in ended]
                    raise AirflowFailException(
                        f"deployments {', '.join(waiting)} not ended after {timeout:g} s; they "
                        "go on in Hone (GET /api/v1/deployments/ID; roll back with POST "
                        "/api/v1/deployments/ID/rollback)"
                    )
                time.sleep(float(params["poll_s"]))
        bad = {k: d for k, d in ended.items() if d["state"] != "done"}
        if bad:
            raise AirflowFailException(
                "; ".join(
                    f"deployment {d['id']} of class {k} {d['state']}: "
                    f"{d.get('reason') or 'no reason given'}"
                    for k, d in bad.items()
                )
            )
        return [
            {"class": k, "deployment": d["id"], "model": d["model_id"], "state": d["state"]}
            for k, d in ended.items()
        ]

    deploy(check_gate(wait(submit())))


hone_compress()
