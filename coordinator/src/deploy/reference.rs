//! Reference input statistics for drift: the statistics of the data a model was validated on,
//! computed once per model and stored ([`crate::db::Db::put_reference`]).

use crate::artifacts::ArtifactStore;
use crate::db::Db;

/// Examples of the validation part summarised (the same fixed subset for every model).
pub const REFERENCE_EXAMPLES: usize = 512;

/// Computes and stores `model_id`'s reference statistics from `data` (a data spec in its text
/// form, e.g. `mnist`); returns how many inputs were summarised.
pub async fn compute(
    db: &Db,
    artifacts: &ArtifactStore,
    model_id: &str,
    data: &str,
    now_ms: i64,
) -> anyhow::Result<usize> {
    let model =
        db.find_model(model_id).await?.ok_or_else(|| anyhow::anyhow!("no model `{model_id}`"))?;
    let path = artifacts.path(&model.sha256);
    let spec = hone_learn::eval::DataSpec::parse(data)?;
    let stats = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let graph = hone_learn::eval::load_model(&path)?;
        let data = hone_learn::eval::EvalData::open(&spec)?;
        hone_learn::eval::stats::input_stats(
            &data,
            &graph,
            hone_learn::data::Part::Validation,
            REFERENCE_EXAMPLES,
            None,
        )
    })
    .await??;
    let n = stats.len();
    db.put_reference(&model.id, data, &serde_json::to_value(&stats)?, now_ms).await?;
    Ok(n)
}
