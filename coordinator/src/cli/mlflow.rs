//! `coordinator mlflow sync|status` (the coordinator's MLflow mirror, through its API) and
//! `coordinator experiments compare` (read back from MLflow itself).

use super::args::ApiArgs;
use super::print::print_json;

/// `coordinator mlflow ...`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum MlflowCmd {
    /// Write to MLflow now everything the coordinator has not written yet (after MLflow was
    /// down, for example); nothing already there is duplicated. Exits 1 if a record failed.
    Sync {
        /// Write every record again, not only the missing ones.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// What has been written to MLflow, and what is failing and why.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `coordinator experiments ...`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum ExperimentsCmd {
    /// Compare pipelines' candidates across runs and experiments, read back from MLflow:
    /// method, settings, size, quality and per-class latency, one row each.
    Compare {
        /// MLflow run ids (a pipeline's run brings its candidates).
        runs: Vec<String>,
        /// Every pipeline of this experiment.
        #[arg(long)]
        experiment: Option<String>,
        /// The tracking server.
        #[arg(long, env = "HONE_MLFLOW_URL")]
        mlflow_url: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn mlflow(cmd: MlflowCmd) -> anyhow::Result<i32> {
    match cmd {
        MlflowCmd::Sync { all, api } => {
            let v: serde_json::Value = api
                .client()?
                .post("/api/v1/mlflow/sync", &serde_json::json!({ "all": all }))
                .await?;
            let failed = v["failed"].as_u64().unwrap_or(0);
            if api.json {
                print_json(&v);
            } else {
                let records = v["records"].as_array().cloned().unwrap_or_default();
                for r in &records {
                    let what = format!(
                        "{} {}",
                        r["kind"].as_str().unwrap_or("?"),
                        r["id"].as_str().unwrap_or("?")
                    );
                    match r["error"].as_str() {
                        Some(e) => println!("{what}: failed: {e}"),
                        None => println!("{what}: written"),
                    }
                }
                println!(
                    "{} record(s) written to {}, {failed} failed",
                    records.len() as u64 - failed,
                    v["mlflow"].as_str().unwrap_or("MLflow")
                );
            }
            Ok(if failed > 0 { 1 } else { 0 })
        }
        MlflowCmd::Status { api } => {
            let v: serde_json::Value = api.client()?.get("/api/v1/mlflow").await?;
            if api.json {
                print_json(&v);
            } else {
                println!("MLflow: {}", v["mlflow"].as_str().unwrap_or("-"));
                for r in v["records"].as_array().into_iter().flatten() {
                    let state = match r["last_error"].as_str() {
                        Some(e) => format!("failing ({} attempts): {e}", r["attempts"]),
                        None => "written".to_string(),
                    };
                    let run = r["remote"]["run_id"].as_str().unwrap_or("");
                    println!(
                        "{:<10} {:<40} {run:<34} {state}",
                        r["kind"].as_str().unwrap_or("?"),
                        r["ref_id"].as_str().unwrap_or("?")
                    );
                }
            }
            Ok(0)
        }
    }
}

pub(super) async fn experiments(cmd: ExperimentsCmd) -> anyhow::Result<i32> {
    match cmd {
        ExperimentsCmd::Compare { runs, experiment, mlflow_url, json } => {
            anyhow::ensure!(
                !runs.is_empty() || experiment.is_some(),
                "give run ids or --experiment NAME"
            );
            let client = crate::mlflow::MlflowClient::new(&mlflow_url)?;
            let c = crate::mlflow::compare::compare(&client, &runs, experiment.as_deref()).await?;
            if json {
                print_json(&serde_json::to_value(&c)?);
            } else {
                print!("{}", crate::mlflow::compare::table(&c));
                println!("{} row(s) from {}", c.rows.len(), c.mlflow);
            }
            Ok(0)
        }
    }
}
