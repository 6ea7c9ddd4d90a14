//! The MLflow REST client: the calls of `../shared/docs/conventions.md` §2.4, nothing else.
//! Credentials come from MLflow's own variables (`MLFLOW_TRACKING_USERNAME` and
//! `MLFLOW_TRACKING_PASSWORD` for basic auth, or `MLFLOW_TRACKING_TOKEN` for a bearer token).
//! Every error says whether retrying can help ([`MlflowError::retryable`]).

use std::time::Duration;

use serde_json::{Value, json};

use super::plan::{Batch, Metric};

/// A failed MLflow call.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    /// The server could not be reached, timed out, or answered 5xx/429: try again later.
    #[error("MLflow at {url} is unavailable: {why}")]
    Unavailable {
        /// The server.
        url: String,
        /// What happened.
        why: String,
    },
    /// The server refused the call (4xx): retrying the same call will not help.
    #[error("MLflow refused {call}: {status} {code}: {message}")]
    Refused {
        /// The endpoint.
        call: String,
        /// HTTP status.
        status: u16,
        /// MLflow's `error_code`.
        code: String,
        /// MLflow's message.
        message: String,
    },
}

impl MlflowError {
    /// Whether the same call may succeed later.
    pub fn retryable(&self) -> bool {
        matches!(self, MlflowError::Unavailable { .. })
    }

    /// MLflow's error code, for refusals.
    pub fn code(&self) -> Option<&str> {
        match self {
            MlflowError::Refused { code, .. } => Some(code),
            MlflowError::Unavailable { .. } => None,
        }
    }
}

type Result<T> = std::result::Result<T, MlflowError>;

/// How requests authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    None,
    /// HTTP basic auth (`mlflow server --app-name basic-auth`).
    Basic(String, String),
    /// A bearer token.
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        match self {
            Auth::None => write!(f, "None"),
            Auth::Basic(user, _) => write!(f, "Basic({user}, ***)"),
            Auth::Bearer(_) => write!(f, "Bearer(***)"),
        }
    }
}

impl Auth {
    /// MLflow's own variables, read through `var`: `MLFLOW_TRACKING_USERNAME` and
    /// `MLFLOW_TRACKING_PASSWORD` (basic auth) win over `MLFLOW_TRACKING_TOKEN` (bearer); empty
    /// values count as unset.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Auth {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        match (
            get("MLFLOW_TRACKING_USERNAME"),
            get("MLFLOW_TRACKING_PASSWORD"),
            get("MLFLOW_TRACKING_TOKEN"),
        ) {
            (Some(u), Some(p), _) => Auth::Basic(u, p),
            (_, _, Some(t)) => Auth::Bearer(t),
            _ => Auth::None,
        }
    }
}

/// A run as MLflow returns it (the parts Hone reads).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Run id.
    pub id: String,
    /// Its artifact root (`mlflow-artifacts:/EXP/RUN/artifacts` when the server proxies them).
    pub artifact_uri: String,
    /// Its name.
    pub name: String,
    /// Experiment id.
    pub experiment_id: String,
    /// `RUNNING`, `FINISHED`, `FAILED`, `KILLED`.
    pub status: String,
    /// Parameters.
    pub params: Vec<(String, String)>,
    /// Latest value of each metric.
    pub metrics: Vec<(String, f64)>,
    /// Tags.
    pub tags: Vec<(String, String)>,
}

impl Run {
    fn from_json(v: &Value) -> Run {
        let info = &v["info"];
        let data = &v["data"];
        let pairs = |key: &str| -> Vec<(String, String)> {
            data[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            (
                                p["key"].as_str().unwrap_or_default().to_string(),
                                p["value"].as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let metrics = data["metrics"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| Some((m["key"].as_str()?.to_string(), m["value"].as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        Run {
            id: info["run_id"].as_str().unwrap_or_default().to_string(),
            artifact_uri: info["artifact_uri"].as_str().unwrap_or_default().to_string(),
            name: info["run_name"].as_str().unwrap_or_default().to_string(),
            experiment_id: info["experiment_id"].as_str().unwrap_or_default().to_string(),
            status: info["status"].as_str().unwrap_or_default().to_string(),
            params: pairs("params"),
            metrics,
            tags: pairs("tags"),
        }
    }

    /// A tag's value.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A parameter's value.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A metric's latest value.
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.metrics.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// A registered model version (the parts Hone reads).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelVersion {
    /// Registered model name.
    pub name: String,
    /// Version number, as MLflow writes it.
    pub version: String,
    /// The run it came from.
    pub run_id: String,
}

/// A client of one MLflow tracking server.
#[derive(Clone)]
pub struct MlflowClient {
    base: String,
    http: reqwest::Client,
    auth: Auth,
}

impl std::fmt::Debug for MlflowClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowClient").field("base", &self.base).finish_non_exhaustive()
    }
}

impl MlflowClient {
    /// A client of the server at `url` (`http://host:port`, optionally with a path prefix),
    /// authenticating with MLflow's environment variables when they are set
    /// ([`Auth::from_env`]).
    pub fn new(url: &str) -> anyhow::Result<MlflowClient> {
        MlflowClient::with_auth(url, Auth::from_env(|k| std::env::var(k).ok()))
    }

    /// A client of the server at `url` with these credentials.
    pub fn with_auth(url: &str, auth: Auth) -> anyhow::Result<MlflowClient> {
        let base = url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| anyhow::anyhow!("--mlflow-url `{url}` is not a URL: {e}"))?;
        if parsed.scheme() != "http" {
            anyhow::bail!(
                "--mlflow-url `{url}`: only http:// is supported by this build (put a TLS \
                 terminating proxy on loopback in front of an https server)"
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build()?;
        Ok(MlflowClient { base, http, auth })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn authed(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::None => r,
            Auth::Basic(u, p) => r.basic_auth(u, Some(p)),
            Auth::Bearer(t) => r.bearer_auth(t),
        }
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> MlflowError {
        MlflowError::Unavailable { url: self.base.clone(), why: why.to_string() }
    }

    async fn answer(&self, call: &str, resp: reqwest::Response) -> Result<Value> {
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unavailable(e))?;
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(self.unavailable(format!("{call}: HTTP {status}: {}", short(&text))));
        }
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(MlflowError::Refused {
                call: call.to_string(),
                status: status.as_u16(),
                code: value["error_code"].as_str().unwrap_or("HTTP").to_string(),
                message: value["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| short(&text).to_string()),
            });
        }
        Ok(value)
    }

    /// `POST /api/2.0/mlflow/{call}` with a JSON body.
    async fn post(&self, call: &str, body: Value) -> Result<Value> {
        let url = format!("{}/api/2.0/mlflow/{call}", self.base);
        let resp = self
            .authed(self.http.post(&url).json(&body))
            .send()
            .await
            .map_err(|e| self.unavailable(format!("{call}: {e}")))?;
        self.answer(call, resp).await
    }

    /// `GET /api/2.0/mlflow/{call}?query`.
    async fn get(&self, call: &str, query: &[(&str, &str)]) -> Result<Value> {
        let url = format!("{}/api/2.0/mlflow/{call}", self.base);
        let resp = self
            .authed(self.http.get(&url).query(query))
            .send()
            .await
            .map_err(|e| self.unavailable(format!("{call}: {e}")))?;
        self.answer(call, resp).await
    }

    /// The id of the experiment named `name`, if it exists.
    pub async fn experiment_id(&self, name: &str) -> Result<Option<String>> {
        match self.get("experiments/get-by-name", &[("experiment_name", name)]).await {
            Ok(v) => Ok(v["experiment"]["experiment_id"].as_str().map(str::to_string)),
            Err(e) if e.code() == Some("RESOURCE_DOES_NOT_EXIST") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The id of the experiment named `name`, created if needed (a concurrent creation by
    /// someone else is read back).
    pub async fn ensure_experiment(&self, name: &str) -> Result<String> {
        if let Some(id) = self.experiment_id(name).await? {
            return Ok(id);
        }
        match self.post("experiments/create", json!({ "name": name })).await {
            Ok(v) => Ok(v["experiment_id"].as_str().unwrap_or_default().to_string()),
            Err(e) if e.code() == Some("RESOURCE_ALREADY_EXISTS") => {
                self.experiment_id(name).await?.ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs of the experiments matching an MLflow filter string (every page).
    pub async fn search_runs(&self, experiment_ids: &[String], filter: &str) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({
                "experiment_ids": experiment_ids,
                "filter": filter,
                "max_results": 1000,
                "run_view_type": "ACTIVE_ONLY",
            });
            if let Some(t) = &token {
                body["page_token"] = json!(t);
            }
            let v = self.post("runs/search", body).await?;
            runs.extend(v["runs"].as_array().into_iter().flatten().map(Run::from_json));
            match v["next_page_token"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(runs),
            }
        }
    }

    /// One run.
    pub async fn get_run(&self, run_id: &str) -> Result<Run> {
        let v = self.get("runs/get", &[("run_id", run_id)]).await?;
        Ok(Run::from_json(&v["run"]))
    }

    /// Creates a run.
    pub async fn create_run(
        &self,
        experiment_id: &str,
        name: &str,
        start_time_ms: i64,
        tags: &[(String, String)],
    ) -> Result<Run> {
        let tags: Vec<Value> = tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        let v = self
            .post(
                "runs/create",
                json!({
                    "experiment_id": experiment_id,
                    "run_name": name,
                    "start_time": start_time_ms,
                    "tags": tags,
                }),
            )
            .await?;
        Ok(Run::from_json(&v["run"]))
    }

    /// Logs parameters, metrics and tags in calls within MLflow's limits.
    pub async fn log(&self, run_id: &str, batches: &[Batch]) -> Result<()> {
        for b in batches {
            let pairs = |xs: &[(String, String)]| -> Vec<Value> {
                xs.iter().map(|(k, v)| json!({"key": k, "value": v})).collect()
            };
            let metrics: Vec<Value> = b.metrics.iter().map(Metric::to_json).collect();
            self.post(
                "runs/log-batch",
                json!({
                    "run_id": run_id,
                    "params": pairs(&b.params),
                    "tags": pairs(&b.tags),
                    "metrics": metrics,
                }),
            )
            .await?;
        }
        Ok(())
    }

    /// `runs/log-inputs`: the data sets the run used.
    pub async fn log_inputs(&self, run_id: &str, datasets: Vec<Value>) -> Result<()> {
        self.post("runs/log-inputs", json!({"run_id": run_id, "datasets": datasets})).await?;
        Ok(())
    }

    /// Sets a run's status and end time.
    pub async fn end_run(&self, run_id: &str, status: &str, end_time_ms: i64) -> Result<()> {
        self.post(
            "runs/update",
            json!({"run_id": run_id, "status": status, "end_time": end_time_ms}),
        )
        .await?;
        Ok(())
    }

    /// The proxy URL of `rel` under a run's artifact root. Only proxied roots
    /// (`mlflow-artifacts:`) can be written through the tracking server.
    fn artifact_url(&self, artifact_uri: &str, rel: &str) -> anyhow::Result<String> {
        let path = artifact_uri.strip_prefix("mlflow-artifacts:").ok_or_else(|| {
            anyhow::anyhow!(
                "the run's artifact location `{artifact_uri}` is not served by the tracking \
                 server: start MLflow with --serve-artifacts (its default) and an \
                 --artifacts-destination"
            )
        })?;
        // `mlflow-artifacts://host:port/path` or `mlflow-artifacts:/path`.
        let path = match path.strip_prefix("//") {
            Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
            None => path,
        };
        Ok(format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{}/{}",
            self.base,
            path.trim_matches('/'),
            rel.trim_start_matches('/')
        ))
    }

    /// Uploads a file as the artifact `rel` of a run, through the artifact proxy (streamed).
    pub async fn upload_file(
        &self,
        artifact_uri: &str,
        rel: &str,
        file: &std::path::Path,
    ) -> anyhow::Result<()> {
        let url = self.artifact_url(artifact_uri, rel)?;
        let f = tokio::fs::File::open(file).await?;
        let len = f.metadata().await?.len();
        let body = reqwest::Body::from(f);
        let resp = self
            .authed(self.http.put(&url).header(reqwest::header::CONTENT_LENGTH, len).body(body))
            .send()
            .await
            .map_err(|e| self.unavailable(format!("uploading {rel}: {e}")))?;
        self.answer(&format!("artifact upload {rel}"), resp).await?;
        Ok(())
    }

    /// Uploads bytes as the artifact `rel` of a run.
    pub async fn upload_bytes(
        &self,
        artifact_uri: &str,
        rel: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<()> {
        let url = self.artifact_url(artifact_uri, rel)?;
        let resp = self
            .authed(self.http.put(&url).body(bytes))
            .send()
            .await
            .map_err(|e| self.unavailable(format!("uploading {rel}: {e}")))?;
        self.answer(&format!("artifact upload {rel}"), resp).await?;
        Ok(())
    }

    /// Creates a registered model (an existing one is fine).
    pub async fn ensure_registered_model(&self, name: &str) -> Result<()> {
        match self.post("registered-models/create", json!({ "name": name })).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("RESOURCE_ALREADY_EXISTS") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The versions of a registered model made from `run_id`.
    pub async fn versions_of_run(&self, name: &str, run_id: &str) -> Result<Vec<ModelVersion>> {
        let filter = format!("name = '{}' and run_id = '{}'", quote(name), quote(run_id));
        let v = self
            .get("model-versions/search", &[("filter", filter.as_str()), ("max_results", "200")])
            .await?;
        Ok(v["model_versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| ModelVersion {
                name: m["name"].as_str().unwrap_or_default().to_string(),
                version: m["version"].as_str().unwrap_or_default().to_string(),
                run_id: m["run_id"].as_str().unwrap_or_default().to_string(),
            })
            .collect())
    }

    /// Creates a model version from `source` (an artifact folder of `run_id`) with tags.
    pub async fn create_version(
        &self,
        name: &str,
        source: &str,
        run_id: &str,
        tags: &[(String, String)],
        description: &str,
    ) -> Result<ModelVersion> {
        let tags: Vec<Value> = tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        let v = self
            .post(
                "model-versions/create",
                json!({
                    "name": name,
                    "source": source,
                    "run_id": run_id,
                    "tags": tags,
                    "description": description,
                }),
            )
            .await?;
        let m = &v["model_version"];
        Ok(ModelVersion {
            name: m["name"].as_str().unwrap_or_default().to_string(),
            version: m["version"].as_str().unwrap_or_default().to_string(),
            run_id: m["run_id"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// Sets a tag on a model version.
    pub async fn set_version_tag(
        &self,
        name: &str,
        version: &str,
        key: &str,
        value: &str,
    ) -> Result<()> {
        self.post(
            "model-versions/set-tag",
            json!({"name": name, "version": version, "key": key, "value": value}),
        )
        .await?;
        Ok(())
    }

    /// Points `alias` of a registered model at `version`.
    pub async fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<()> {
        self.post(
            "registered-models/alias",
            json!({"name": name, "alias": alias, "version": version}),
        )
        .await?;
        Ok(())
    }
}

/// A filter-string literal: single quotes removed (Hone's ids and names never hold one).
pub fn quote(s: &str) -> String {
    s.replace('\'', "")
}

fn short(s: &str) -> &str {
    let end = s.char_indices().nth(300).map(|(i, _)| i).unwrap_or(s.len());
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_mlflow_s_own_variables_and_never_print() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(Auth::from_env(env(&[])), Auth::None);
        let basic = Auth::from_env(env(&[
            ("MLFLOW_TRACKING_USERNAME", "ann"),
            ("MLFLOW_TRACKING_PASSWORD", "s3cret"),
            ("MLFLOW_TRACKING_TOKEN", "tok"),
        ]));
        assert_eq!(basic, Auth::Basic("ann".into(), "s3cret".into()), "basic auth wins");
        assert!(!format!("{basic:?}").contains("s3cret"));
        let bearer = Auth::from_env(env(&[
            ("MLFLOW_TRACKING_USERNAME", "ann"),
            ("MLFLOW_TRACKING_PASSWORD", ""),
            ("MLFLOW_TRACKING_TOKEN", "tok"),
        ]));
        assert_eq!(bearer, Auth::Bearer("tok".into()), "an empty password is unset");
        assert!(!format!("{bearer:?}").contains("tok"));
        assert!(MlflowClient::new("https://mlflow.example").is_err(), "http only, said clearly");
        assert!(MlflowClient::new("not a url").is_err());
    }

    #[test]
    fn artifact_uris_map_onto_the_proxy_and_others_are_refused_with_the_fix() {
        let c = MlflowClient::with_auth("http://127.0.0.1:5000/", Auth::None).unwrap();
        assert_eq!(
            c.artifact_url("mlflow-artifacts:/1/abc/artifacts", "model/model.onnx").unwrap(),
            "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/model/model.onnx"
        );
        assert_eq!(
            c.artifact_url("mlflow-artifacts://h:5000/1/abc/artifacts", "MLmodel").unwrap(),
            "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/MLmodel"
        );
        let e = c.artifact_url("s3://bucket/1/abc", "x").unwrap_err().to_string();
        assert!(e.contains("--serve-artifacts"), "{e}");
    }
}
