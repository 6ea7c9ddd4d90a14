//! Registration: the model check ([`hone_graph::gate`] on a blocking thread, so a slow or hostile
//! model never stalls the API's runtime), the artifact commit and the registry row. Uploads,
//! registration by path and the pipeline's candidates all go through [`register`].

use std::path::Path;

use hone_common::shapes::InputShapes;

pub use hone_graph::gate::{ModelError, check_with_tract};

/// [`check_with_tract`] on a file with the given input shapes, on a blocking thread.
pub async fn check_file(
    path: &Path,
    inputs: &InputShapes,
) -> Result<serde_json::Value, ModelError> {
    let (path, inputs) = (path.to_path_buf(), inputs.clone());
    tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path)?;
        check_with_tract(&bytes, &inputs)
    })
    .await
    .map_err(|e| ModelError::Panicked(e.to_string()))?
}

/// The runtimes a registered model runs in (`summary.runtimes`; models registered before runtimes
/// were recorded ran in tract).
pub fn model_runtimes(model: &crate::db::ModelRow) -> Vec<hone_common::bench::Runtime> {
    serde_json::from_value(model.summary["runtimes"].clone()).unwrap_or_else(|_| {
        vec![hone_common::bench::Runtime::Tract, hone_common::bench::Runtime::Ort]
    })
}

/// Why `model` cannot be measured in `runtime` (`None`: it can).
pub fn runtime_refusal(
    model: &crate::db::ModelRow,
    runtime: hone_common::bench::Runtime,
) -> Option<String> {
    (!model_runtimes(model).contains(&runtime)).then(|| {
        format!(
            "model `{}` runs only in {} ({}): measure it with --runtime ort",
            model.name,
            model_runtimes(model).iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
            model.summary["tract_refusal"].as_str().unwrap_or("its gate refused the others")
        )
    })
}

/// Loads a model in ONNX Runtime in this process (the `ort-check` child's work).
pub fn ort_load(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)?;
    let graph = hone_graph::Graph::from_bytes(&bytes)?;
    hone_learn::eval::ort::OrtModel::new(&graph, 1).map(drop)
}

/// The ONNX Runtime gate: `coordinator ort-check` in a child process (a model that crashes
/// ONNX Runtime ends the child, not the coordinator), at most 120 s; the model's summary when
/// ONNX Runtime loads it.
async fn ort_gate(path: &Path) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no executable to check with: {e}"))?;
    let child = tokio::process::Command::new(exe)
        .arg("ort-check")
        .arg("--model")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the ONNX Runtime check: {e}"))?;
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), child.wait_with_output())
        .await
        .map_err(|_| "the ONNX Runtime check took over 120 s".to_string())?
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| "the ONNX Runtime check crashed".to_string())?;
    if v["ok"] != true {
        return Err(v["error"].as_str().unwrap_or("refused").to_owned());
    }
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    let graph = hone_graph::Graph::from_bytes(&bytes).map_err(|e| e.to_string())?;
    hone_graph::gate::summarize(graph.proto()).map_err(|e| e.to_string())
}

/// The shapes of a model registered without any: for a language model Hone wrote (its card in
/// the ONNX metadata), one decode step after [`hone_learn::llm::DECODE_PAST`] cached tokens, the
/// step its devices measure; none for any other model (its symbols take their defaults).
async fn default_inputs(path: &Path) -> InputShapes {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        // From the bytes alone: external data is never followed before the gate has run.
        let graph = hone_graph::Graph::from_bytes(&std::fs::read(&path).ok()?).ok()?;
        let card = hone_learn::llm::card_of(&graph).ok()?;
        Some(hone_learn::llm::decode_shapes(&card.config, hone_learn::llm::DECODE_PAST))
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Why a model was not registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The name is empty, too long or has control characters.
    #[error("{0}")]
    Name(String),
    /// Receiving the bytes failed (too large, IO).
    #[error(transparent)]
    Incoming(crate::artifacts::IncomingError),
    /// The gate refused the model (tract cannot load it, hostile sizes, ...).
    #[error("{0}")]
    Refused(String),
    /// Anything else (database, disk).
    #[error(transparent)]
    Internal(anyhow::Error),
}

/// Checks received bytes with the tract gate, commits them to the artifact store and adds the
/// registry row (with `lineage` for models a pipeline made). Returns whether the row is new: a
/// model with the same digest is the same model, whatever its name.
pub async fn register(
    db: &crate::db::Db,
    artifacts: &crate::artifacts::ArtifactStore,
    incoming: crate::artifacts::Incoming,
    name: String,
    inputs: InputShapes,
    lineage: Option<serde_json::Value>,
) -> Result<(bool, crate::db::ModelRow), RegisterError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control()) {
        return Err(RegisterError::Name("model name must be 1-128 printable characters".into()));
    }
    let received = incoming.finish().await.map_err(RegisterError::Incoming)?;
    let sha = hex::encode(received.sha256);
    let internal = |e: crate::db::DbError| RegisterError::Internal(e.into());
    if let Some(existing) = db.model_by_sha(&sha).await.map_err(internal)? {
        received.discard().await;
        return Ok((false, existing));
    }
    let inputs = if inputs.is_empty() { default_inputs(&received.tmp).await } else { inputs };
    let summary = match check_file(&received.tmp, &inputs).await {
        Ok(mut summary) => {
            if !inputs.is_empty() {
                summary["input_shapes"] = serde_json::to_value(&inputs).unwrap_or_default();
            }
            // tract's gate passed; ONNX Runtime is not excluded (agents check it when they load).
            summary["runtimes"] = serde_json::json!(["tract", "ort"]);
            summary["gate"] = serde_json::json!("tract");
            summary
        }
        // tract cannot run it: a model meant for ONNX Runtime (contrib ops, QOperator int8)
        // is registered for ONNX Runtime alone if ONNX Runtime loads it, in a child process.
        Err(e @ (ModelError::Unloadable(_) | ModelError::Panicked(_))) => {
            let tract = e.to_string();
            match ort_gate(&received.tmp).await {
                Ok(mut summary) => {
                    if !inputs.is_empty() {
                        summary["input_shapes"] = serde_json::to_value(&inputs).unwrap_or_default();
                    }
                    summary["runtimes"] = serde_json::json!(["ort"]);
                    summary["gate"] = serde_json::json!("onnxruntime");
                    summary["tract_refusal"] = serde_json::json!(tract);
                    summary
                }
                Err(ort) => {
                    received.discard().await;
                    return Err(RegisterError::Refused(format!(
                        "{tract}; ONNX Runtime cannot load it either: {ort}"
                    )));
                }
            }
        }
        Err(e) => {
            received.discard().await;
            return Err(match e {
                ModelError::Io(io) => RegisterError::Internal(io.into()),
                other => RegisterError::Refused(other.to_string()),
            });
        }
    };
    let size = received.size as i64;
    received.commit(artifacts).await.map_err(|e| RegisterError::Internal(e.into()))?;
    let row = crate::db::ModelRow {
        id: format!("m-{}", &sha[..16]),
        name,
        sha256: sha,
        size_bytes: size,
        summary,
        created_at_ms: hone_common::clock::now_ms() as i64,
        lineage,
    };
    let stored = db.insert_model(&row).await.map_err(internal)?;
    tracing::info!(model = %stored.id, name = %stored.name, size, "model registered");
    Ok((true, stored))
}

/// [`register`] for a file on the coordinator's own disk (the pipeline's candidates).
pub async fn register_file(
    db: &crate::db::Db,
    artifacts: &crate::artifacts::ArtifactStore,
    path: &Path,
    name: String,
    inputs: InputShapes,
    lineage: Option<serde_json::Value>,
) -> Result<(bool, crate::db::ModelRow), RegisterError> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| RegisterError::Internal(anyhow::anyhow!("reading {}: {e}", path.display())))?;
    let mut incoming =
        artifacts.begin(u64::MAX).await.map_err(|e| RegisterError::Internal(e.into()))?;
    incoming.write(&bytes).await.map_err(RegisterError::Incoming)?;
    register(db, artifacts, incoming, name, inputs, lineage).await
}
