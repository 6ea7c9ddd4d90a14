//! `coordinator results import` and `coordinator compare`: GPU measurements made elsewhere
//! (`scripts/gpu-baseline.sh`, or a published reference) imported with their provenance, and
//! CPU device classes and the GPU side by side for one model ([`crate::compare`]).

use std::path::PathBuf;

use anyhow::Context as _;

use super::args::ApiArgs;
use super::print::print_json;

/// `coordinator results ...`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum ResultsCmd {
    /// Import measurements made elsewhere (a GPU server's, in the format scripts/gpu-baseline.sh
    /// writes), labelled as imported with their provenance.
    Import {
        /// The measurement file (JSON).
        file: PathBuf,
        /// The registered model it measures (id, name or digest prefix).
        #[arg(long)]
        model: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `coordinator compare`.
#[derive(Debug, clap::Args)]
pub(super) struct CompareArgs {
    /// The registered model (id, name or digest prefix).
    #[arg(long)]
    model: String,
    /// GPU price, USD per hour (default: the middle of H100 on-demand list prices, cited in
    /// the output).
    #[arg(long)]
    gpu_hourly_usd: Option<f64>,
    /// Years a CPU board's price is spread over, at full use.
    #[arg(long, default_value_t = 3.0)]
    lifetime_years: f64,
    #[command(flatten)]
    api: ApiArgs,
}

pub(super) async fn results(cmd: ResultsCmd) -> anyhow::Result<i32> {
    match cmd {
        ResultsCmd::Import { file, model, api } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let name =
                file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let path =
                format!("/api/v1/imported-results?model={}&file={}", encode(&model), encode(&name));
            let v: serde_json::Value = api.client()?.post(&path, &body).await?;
            if api.json {
                print_json(&v);
            } else {
                println!(
                    "imported {} rows for {}: {}",
                    v["imported"],
                    v["model"].as_str().unwrap_or(""),
                    v["source"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
    }
}

pub(super) async fn compare(a: CompareArgs) -> anyhow::Result<i32> {
    let mut path =
        format!("/api/v1/compare?model={}&lifetime_years={}", encode(&a.model), a.lifetime_years);
    if let Some(p) = a.gpu_hourly_usd {
        path.push_str(&format!("&gpu_hourly_usd={p}"));
    }
    let v: serde_json::Value = a.api.client()?.get(&path).await?;
    if a.api.json {
        print_json(&v);
        return Ok(0);
    }
    println!("{} ({})", v["model_name"].as_str().unwrap_or(""), v["model"].as_str().unwrap_or(""));
    println!(
        "{:<4} {:<24} {:<28} {:>5} {:>10} {:>10} {:>10} {:>12}",
        "", "device", "runtime", "batch", "p50 ms", "items/s", "J/item", "$/M items"
    );
    let f =
        |x: &serde_json::Value, d: usize| x.as_f64().map_or("-".to_owned(), |v| format!("{v:.d$}"));
    let mut sources = Vec::new();
    for l in v["lines"].as_array().into_iter().flatten() {
        println!(
            "{:<4} {:<24} {:<28} {:>5} {:>10} {:>10} {:>10} {:>12}",
            l["kind"].as_str().unwrap_or(""),
            l["device"].as_str().unwrap_or(""),
            l["runtime"].as_str().unwrap_or(""),
            l["batch"],
            f(&l["p50_ms"], 3),
            f(&l["throughput_per_s"], 1),
            f(&l["joules_per_inference"], 4),
            f(&l["usd_per_million"], 4),
        );
        let p = l["provenance"].as_str().unwrap_or("").to_owned();
        if !sources.contains(&p) {
            sources.push(p);
        }
    }
    println!("provenance:");
    for s in sources {
        println!("  {s}");
    }
    let a = &v["assumptions"];
    println!(
        "GPU at ${}/h ({}); CPU boards over {} years at full use. {}",
        a["gpu_hourly_usd"],
        a["gpu_price_source"].as_str().unwrap_or(""),
        a["cpu_lifetime_years"],
        v["cost_model"].as_str().unwrap_or("")
    );
    Ok(0)
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
