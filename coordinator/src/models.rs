//! Registration's model check: [`hone_graph::gate`] on a blocking thread, so a slow or hostile
//! model never stalls the API's runtime.

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
