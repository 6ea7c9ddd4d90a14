//! A small JSON client of the coordinator API, with the bearer token and the campaign wait.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use super::progress::ProgressView;
use crate::api::CampaignView;
use crate::api::auth::OPERATOR_TOKEN_FILE;

/// A small JSON client of the coordinator API.
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// The token the CLI sends: the file given with `--token-file`, else `$HONE_TOKEN`, else the
/// operator token in `data_dir` when the API is on this machine (and the file exists). `None`
/// lets the coordinator answer 401 with its reason.
pub(super) fn resolve_token(
    api: &str,
    token_file: Option<&Path>,
    env_token: Option<String>,
    data_dir: &Path,
) -> anyhow::Result<Option<String>> {
    if let Some(file) = token_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the token file {}", file.display()))?;
        return Ok(Some(text.trim().to_string()));
    }
    if let Some(token) = env_token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        return Ok(Some(token));
    }
    let host = api.strip_prefix("http://").or_else(|| api.strip_prefix("https://"));
    let local = ["127.0.0.1", "localhost", "[::1]"].iter().any(|prefix| {
        host.and_then(|h| h.strip_prefix(prefix))
            .is_some_and(|r| r.is_empty() || r.starts_with([':', '/']))
    });
    let default = data_dir.join(OPERATOR_TOKEN_FILE);
    if local && default.is_file() {
        let text = std::fs::read_to_string(&default)
            .with_context(|| format!("reading the token file {}", default.display()))?;
        return Ok(Some(text.trim().to_string()));
    }
    Ok(None)
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:7878`), without a token.
    pub fn new(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    /// The same client trusting only the CA in `ca_pem` (a TLS coordinator's `pki/ca.pem`).
    pub fn with_ca(mut self, ca_pem: &str) -> anyhow::Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::pki::certs_from_pem(ca_pem)? {
            roots.add(c)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::pki::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.http = reqwest::Client::builder().use_preconfigured_tls(config).build()?;
        Ok(self)
    }

    /// The same client sending `token` as its bearer token.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn check(&self, resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        bail!("{}: {}", status, body["error"].as_str().unwrap_or("request failed"))
    }

    /// GET a JSON document.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .request(reqwest::Method::GET, &url)
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {url}"))?;
        Ok(self.check(resp).await?.json().await?)
    }

    /// POST JSON, read JSON.
    pub async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .request(reqwest::Method::POST, &url)
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {url}"))?;
        Ok(self.check(resp).await?.json().await?)
    }

    /// Uploads a model file, with the shapes of inputs whose declared shapes are not fixed.
    pub async fn upload_model(
        &self,
        path: &Path,
        name: &str,
        inputs: &hone_common::shapes::InputShapes,
    ) -> anyhow::Result<serde_json::Value> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let url = format!("{}/api/v1/models", self.base);
        let body = reqwest::Body::wrap_stream(file_stream(file));
        let resp = self
            .request(reqwest::Method::POST, &url)
            .query(&[("name", name), ("inputs", &inputs.to_string())])
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the coordinator at {url}"))?;
        Ok(self.check(resp).await?.json().await?)
    }

    /// Waits for a campaign to finish, drawing progress on stderr; returns the final view.
    pub async fn wait_campaign(&self, id: &str, progress: bool) -> anyhow::Result<CampaignView> {
        let tty = progress && std::io::stderr().is_terminal();
        let mut bars = ProgressView::new(tty);
        loop {
            let view: CampaignView = self.get(&format!("/api/v1/campaigns/{id}")).await?;
            if progress {
                bars.update(&view);
            }
            if view.state == "done" || view.state == "cancelled" {
                bars.finish();
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

fn file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 16];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_file_then_the_environment_then_the_local_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OPERATOR_TOKEN_FILE), "hone_local\n").unwrap();
        let given = dir.path().join("given");
        std::fs::write(&given, "hone_given\n").unwrap();
        let local = "http://127.0.0.1:7878";
        let t = |api, file: Option<&Path>, env: Option<&str>| {
            resolve_token(api, file, env.map(String::from), dir.path()).unwrap()
        };
        assert_eq!(t(local, Some(&given), Some("hone_env")).as_deref(), Some("hone_given"));
        assert_eq!(t(local, None, Some("hone_env")).as_deref(), Some("hone_env"));
        assert_eq!(t(local, None, None).as_deref(), Some("hone_local"));
        assert_eq!(t("http://localhost/", None, None).as_deref(), Some("hone_local"));
        assert_eq!(t("https://127.0.0.1:7878", None, None).as_deref(), Some("hone_local"));
        assert_eq!(t("https://127.0.0.1.evil.example", None, None), None);
        // A remote coordinator never gets the local operator token.
        assert_eq!(t("http://coordinator:7878", None, None), None);
        assert_eq!(t("http://127.0.0.1.evil.example", None, None), None);
        assert!(resolve_token(local, Some(&dir.path().join("missing")), None, dir.path()).is_err());
    }
}
