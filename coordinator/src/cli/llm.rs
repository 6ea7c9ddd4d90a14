//! `coordinator llm import` and `coordinator llm generate`: a GGUF Llama imported into a model
//! folder ([`hone_learn::llm::import`]) and greedy decoding over it with tract. Arguments, a
//! blocking thread for the work, and printing; progress on stderr, results on stdout (text, or
//! JSON with `--json`).

use std::path::PathBuf;

use anyhow::Context as _;
use hone_learn::llm::{self, ModelDir};

/// `coordinator llm …`.
#[derive(Debug, clap::Subcommand)]
pub enum LlmCmd {
    /// Import a GGUF Llama (default: SmolLM2-135M-Instruct, the asset) into a folder:
    /// model.onnx (KV cache), model-train.onnx (no cache, for training), tokenizer.json and
    /// config.json.
    Import(ImportArgs),
    /// Greedy decoding with tract over an imported model's KV cache.
    Generate(GenerateArgs),
}

/// Arguments of `coordinator llm import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The GGUF file (default: the `smollm2-135m-instruct-gguf` asset, checked by its sha256).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `coordinator llm generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// A folder written by `llm import`.
    #[arg(long)]
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template (ChatML, with its default system prompt).
    #[arg(long)]
    chat: bool,
    /// The system prompt (with --chat), instead of the template's default.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `coordinator llm …`.
pub async fn run(cmd: LlmCmd) -> anyhow::Result<i32> {
    match cmd {
        LlmCmd::Import(a) => import(a).await,
        LlmCmd::Generate(a) => generate(a).await,
    }
}

async fn import(a: ImportArgs) -> anyhow::Result<i32> {
    let gguf = match a.gguf {
        Some(p) => p,
        None => hone_assets::path(llm::SMOLLM2_ASSET)?,
    };
    let out = a.out.clone();
    let report = super::learn::blocking(move || {
        llm::import(&gguf, &out, |step| eprintln!("{step}"))
            .with_context(|| format!("importing {}", gguf.display()))
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    let c = &report.card.config;
    println!(
        "Llama: {} layers, hidden {}, {} heads ({} KV), FFN {}, vocabulary {}: {:.1} M parameters",
        c.layers,
        c.hidden,
        c.heads,
        c.kv_heads,
        c.ffn,
        c.vocab,
        report.card.params as f64 / 1e6
    );
    if let Some(s) = &report.card.source {
        println!("from {} (sha256 {}), {}", s.file, s.sha256, s.weights);
    }
    println!(
        "read {:.1} s, graphs built, gated and written {:.1} s",
        report.read_s, report.write_s
    );
    for f in &report.files {
        println!("  {}", f.display());
    }
    Ok(0)
}

async fn generate(a: GenerateArgs) -> anyhow::Result<i32> {
    let json = a.json;
    let v = super::learn::blocking(move || {
        let dir = ModelDir::open(&a.model)?;
        let prompt = if a.chat {
            dir.card.chat.prompt(a.system.as_deref(), &a.prompt)
        } else {
            a.prompt.clone()
        };
        let ids = dir.encode(&prompt)?;
        eprintln!("planning {} with tract", dir.dir.join(llm::MODEL_FILE).display());
        let t = std::time::Instant::now();
        let model = dir.tract()?;
        let load_s = t.elapsed().as_secs_f64();
        let g = model.generate(&ids, a.max_tokens, &dir.card.stop_ids)?;
        let text = dir.decode(&g.tokens)?;
        Ok(serde_json::json!({
            "prompt": prompt,
            "text": text,
            "prompt_tokens": g.prompt_tokens,
            "generated_tokens": g.tokens.len(),
            "stopped": g.stopped,
            "load_s": load_s,
            "prefill_ms": g.prefill_ms,
            "decode_steps": g.decode_steps,
            "decode_tokens_per_s": g.decode_tokens_per_s(),
        }))
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", v["text"].as_str().unwrap_or(""));
        eprintln!(
            "{} prompt tokens, {} generated{}; model planned in {:.1} s, prefill {:.0} ms, \
             decode {:.1} tokens/s",
            v["prompt_tokens"],
            v["generated_tokens"],
            if v["stopped"] == true { " (stopped at the end of the answer)" } else { "" },
            v["load_s"].as_f64().unwrap_or(0.0),
            v["prefill_ms"].as_f64().unwrap_or(0.0),
            v["decode_tokens_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(0)
}
