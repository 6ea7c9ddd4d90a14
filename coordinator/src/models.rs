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
            summary
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
