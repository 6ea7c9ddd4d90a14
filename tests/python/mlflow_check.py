"""Reads back, with MLflow's official Python client, what Hone wrote for one pipeline, and
prints it as JSON for the Rust test (tests/tests/mlflow.rs) to check.

    python mlflow_check.py TRACKING_URI EXPERIMENT PIPELINE_ID [REGISTERED_MODEL ALIAS ...]
"""
import hashlib
import json
import os
import sys
import tempfile

import mlflow
from mlflow import MlflowClient


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    uri, experiment, pipeline = sys.argv[1:4]
    aliases = sys.argv[4:]
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    out = {"experiment_id": exp.experiment_id if exp else None, "runs": [], "versions": []}
    if exp is None:
        print(json.dumps(out))
        return
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`hone.pipeline` = '{pipeline}'",
        max_results=1000,
    )
    tmp = tempfile.mkdtemp()
    for r in runs:
        tags = r.data.tags
        entry = {
            "id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "kind": tags.get("hone.kind"),
            "candidate": tags.get("hone.candidate"),
            "parent_run": tags.get("mlflow.parentRunId"),
            "params": r.data.params,
            "metrics": r.data.metrics,
            "tags": {k: v for k, v in tags.items() if k.startswith("hone.")},
            "inputs": [
                {"name": d.dataset.name, "digest": d.dataset.digest,
                 "source_type": d.dataset.source_type, "source": d.dataset.source}
                for d in (r.inputs.dataset_inputs if r.inputs else [])
            ],
            "artifacts": sorted(a.path for a in client.list_artifacts(r.info.run_id)),
            "metric_history": {},
        }
        for key in r.data.metrics:
            entry["metric_history"][key] = len(client.get_metric_history(r.info.run_id, key))
        if "model" in entry["artifacts"]:
            local = mlflow.artifacts.download_artifacts(
                run_id=r.info.run_id, artifact_path="model/model.onnx", dst_path=os.path.join(tmp, r.info.run_id)
            )
            entry["model_sha256"] = sha256(local)
        out["runs"].append(entry)
    for i in range(0, len(aliases), 2):
        name, alias = aliases[i], aliases[i + 1]
        mv = client.get_model_version_by_alias(name, alias)
        uri_ = f"models:/{name}@{alias}"
        local = mlflow.artifacts.download_artifacts(uri_, dst_path=os.path.join(tmp, f"{name}-{alias}"))
        proto = mlflow.onnx.load_model(uri_)
        pyfunc = mlflow.pyfunc.load_model(uri_)
        out["versions"].append({
            "name": name,
            "alias": alias,
            "version": mv.version,
            "run_id": mv.run_id,
            "source": mv.source,
            "tags": mv.tags,
            "aliases": list(mv.aliases),
            "model_sha256": sha256(os.path.join(local, "model.onnx")),
            "onnx_nodes": len(proto.graph.node),
            "pyfunc_flavors": sorted(pyfunc.metadata.flavors.keys()),
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
