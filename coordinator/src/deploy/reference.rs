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

/// Computes the deployed model's reference statistics in the background (from the request's
/// reference data, else its pipeline's data), unless the model has some already.
pub fn spawn(
    db: &Db,
    artifacts: &ArtifactStore,
    import: Option<std::path::PathBuf>,
    d: &crate::db::DeploymentRow,
) {
    let (db, artifacts, model) = (db.clone(), artifacts.clone(), d.model_id.clone());
    let req: Option<super::DeployRequest> = serde_json::from_value(d.request.clone()).ok();
    tokio::spawn(async move {
        let Some(req) = req else { return };
        if matches!(db.reference(&model).await, Ok(Some(_))) {
            return;
        }
        let data = match (&req.reference_data, &req.pipeline) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(p)) => match db.pipeline(p).await {
                Ok(Some(p)) => {
                    serde_json::from_value::<hone_learn::eval::DataSpec>(p.request["data"].clone())
                        .ok()
                        .map(|spec| spec.describe())
                }
                _ => None,
            },
            _ => None,
        };
        let Some(mut data) = data else {
            tracing::info!(%model, "no reference data for drift: the drift rule is off for this model");
            return;
        };
        // A relative path names a file under the import folder.
        if let (Some(import), Ok(spec)) = (&import, hone_learn::eval::DataSpec::parse(&data))
            && let hone_learn::eval::DataSource::Path(p) = &spec.source
            && p.is_relative()
        {
            data =
                data.replacen(&p.display().to_string(), &import.join(p).display().to_string(), 1);
        }
        // So does a relative DVC repository path.
        if let (Some(import), Ok(mut spec)) = (&import, hone_learn::eval::DataSpec::parse(&data))
            && let hone_learn::eval::DataSource::Dvc(r) = &spec.source
            && let Ok(r) = hone_learn::data::dvc::DvcRef::parse(r)
            && r.path.is_relative()
        {
            spec.source = hone_learn::eval::DataSource::Dvc(r.relative_to(import).to_string());
            data = spec.to_string();
        }
        let now = hone_common::clock::now_ms() as i64;
        match compute(&db, &artifacts, &model, &data, now).await {
            Ok(n) => tracing::info!(%model, %data, inputs = n, "reference statistics stored"),
            Err(e) => {
                tracing::warn!(%model, %data, error = %format!("{e:#}"), "no reference statistics: the drift rule is off for this model")
            }
        }
    });
}
