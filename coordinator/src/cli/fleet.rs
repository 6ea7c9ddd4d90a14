//! The API commands: `models`, `devices`, `keys` and `campaign`.

use anyhow::bail;
use hone_common::bench::BenchSpec;

use super::args::{CampaignCmd, DevicesCmd, KeysCmd, ModelsCmd};
use super::print::{print_campaign, print_campaigns, print_devices, print_json, print_models};
use crate::api::CampaignView;
use crate::campaign::CampaignRequest;

pub(super) async fn devices(cmd: DevicesCmd) -> anyhow::Result<i32> {
    let (api, path, body) = match cmd {
        DevicesCmd::List { api } => {
            let devices: serde_json::Value = api.client()?.get("/api/v1/devices").await?;
            if api.json {
                print_json(&devices);
            } else {
                print_devices(&devices);
            }
            return Ok(0);
        }
        DevicesCmd::Identities { device, api } => {
            let path = match &device {
                Some(d) => format!("/api/v1/devices/{d}/identity"),
                None => "/api/v1/identities".to_string(),
            };
            let v: serde_json::Value = api.client()?.get(&path).await?;
            if api.json || device.is_some() {
                print_json(&v);
            } else {
                println!("{:<24} {:<15} {:<16} KEY", "DEVICE", "STATE", "SINCE (ms)");
                for i in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:<15} {:<16} {}",
                        i["device_id"].as_str().unwrap_or(""),
                        i["state"].as_str().unwrap_or(""),
                        i["updated_at_ms"],
                        &i["key_id"].as_str().unwrap_or("")
                            [..16.min(i["key_id"].as_str().unwrap_or("").len())]
                    );
                }
            }
            return Ok(0);
        }
        DevicesCmd::Token { device, ttl_s, api } => {
            let body = serde_json::json!({ "device_id": device, "ttl_s": ttl_s });
            let v: serde_json::Value = api.client()?.post("/api/v1/enroll/tokens", &body).await?;
            if api.json {
                print_json(&v);
            } else {
                let base = api.api.trim_end_matches('/');
                eprintln!(
                    "enrolment token {} (one use, valid until {} Unix ms{}); it is shown only once.",
                    v["id"].as_str().unwrap_or(""),
                    v["expires_at_ms"],
                    device.as_deref().map(|d| format!(", bound to {d}")).unwrap_or_default()
                );
                eprintln!("on the device:");
                println!(
                    "HONE_ENROL_TOKEN={} edge-agent enroll --coordinator {base} --ca-sha256 {}",
                    v["token"].as_str().unwrap_or(""),
                    v["ca_sha256"].as_str().unwrap_or("")
                );
            }
            return Ok(0);
        }
        DevicesCmd::Approve { device, api } => {
            (api, format!("/api/v1/devices/{device}/approve"), serde_json::json!({}))
        }
        DevicesCmd::Revoke { device, api } => {
            (api, format!("/api/v1/devices/{device}/revoke"), serde_json::json!({}))
        }
        DevicesCmd::Decommission { device, api } => {
            (api, format!("/api/v1/devices/{device}/decommission"), serde_json::json!({}))
        }
    };
    let v: serde_json::Value = api.client()?.post(&path, &body).await?;
    if api.json {
        print_json(&v);
    } else {
        let mut line = format!(
            "{}: {}",
            v["device_id"].as_str().unwrap_or(""),
            v["state"].as_str().unwrap_or("")
        );
        if let Some(n) = v["certificates_revoked"].as_u64() {
            line.push_str(&format!(", {n} certificate(s) revoked"));
        }
        println!("{line}");
    }
    Ok(0)
}

pub(super) async fn keys(cmd: KeysCmd) -> anyhow::Result<i32> {
    match cmd {
        KeysCmd::Show { api } => {
            let keys: serde_json::Value = api.client()?.get("/api/v1/keys").await?;
            if api.json {
                print_json(&keys);
            } else {
                println!("signing key {} (ed25519)", keys["public_key"].as_str().unwrap_or(""));
                for r in keys["rotations"].as_array().into_iter().flatten() {
                    println!(
                        "rotation {}: {} -> {} at {} ms",
                        r["sequence"], r["old_key"], r["new_key"], r["issued_at_ms"]
                    );
                }
            }
        }
        KeysCmd::Rotate { api } => {
            let out: serde_json::Value =
                api.client()?.post("/api/v1/keys/rotate", &serde_json::json!({})).await?;
            if api.json {
                print_json(&out);
            } else {
                let r = &out["rotation"];
                println!("{}", out["public_key"].as_str().unwrap_or(""));
                eprintln!(
                    "rotated the signing key (rotation {}): {} -> {}; agents follow the chain by \
                     themselves; back up the coordinator's keys/ folder now",
                    r["sequence"],
                    r["old_key"].as_str().unwrap_or(""),
                    r["new_key"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(0)
}

pub(super) async fn campaign(cmd: CampaignCmd) -> anyhow::Result<i32> {
    match cmd {
        CampaignCmd::Start {
            api,
            models,
            devices,
            id,
            warmup,
            iterations,
            max_time_ms,
            job_timeout_ms,
            max_attempts,
            max_parallel,
            mode,
            seconds,
            batch_sizes,
            inputs,
            runtime,
            threads,
            wait,
        } => {
            let mode = match mode.as_str() {
                "single" => hone_common::bench::BenchMode::Single,
                "sustained" => hone_common::bench::BenchMode::Sustained { seconds },
                "cold" => hone_common::bench::BenchMode::Cold,
                "throughput" => hone_common::bench::BenchMode::Throughput { batch_sizes },
                other => bail!("unknown mode `{other}`: single, sustained, cold or throughput"),
            };
            let client = api.client()?;
            let req = CampaignRequest {
                id,
                models,
                devices,
                bench: BenchSpec {
                    warmup,
                    max_iterations: iterations,
                    max_time_ms,
                    symbols: vec![],
                    mode,
                    inputs: hone_common::shapes::InputShapes::parse_all(&inputs)?,
                    runtime,
                    threads,
                },
                job_timeout_ms,
                max_attempts,
                max_parallel,
            };
            let view: CampaignView = client.post("/api/v1/campaigns", &req).await?;
            if !api.json {
                eprintln!("campaign {} started: {} jobs", view.id, view.progress.total);
            }
            let view = if wait { client.wait_campaign(&view.id, !api.json).await? } else { view };
            if api.json {
                print_json(&serde_json::to_value(&view)?);
            } else if wait {
                print_campaign(&view);
            } else {
                println!("{}", view.id);
            }
            Ok(if wait && view.progress.failed > 0 { 2 } else { 0 })
        }
        CampaignCmd::Show { api, id } => {
            let view: CampaignView = api.client()?.get(&format!("/api/v1/campaigns/{id}")).await?;
            if api.json {
                print_json(&serde_json::to_value(&view)?);
            } else {
                print_campaign(&view);
            }
            Ok(0)
        }
        CampaignCmd::List { api } => {
            let list: Vec<CampaignView> = api.client()?.get("/api/v1/campaigns").await?;
            if api.json {
                print_json(&serde_json::to_value(&list)?);
            } else {
                print_campaigns(&list);
            }
            Ok(0)
        }
    }
}

pub(super) async fn models(cmd: ModelsCmd) -> anyhow::Result<i32> {
    match cmd {
        ModelsCmd::Add { api, path, name, inputs } => {
            let inputs = hone_common::shapes::InputShapes::parse_all(&inputs)?;
            let name = name.unwrap_or_else(|| {
                path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
            });
            let model = api.client()?.upload_model(&path, &name, &inputs).await?;
            if api.json {
                print_json(&model);
            } else {
                println!(
                    "{} {} ({} bytes, sha256 {})",
                    model["id"].as_str().unwrap_or(""),
                    model["name"].as_str().unwrap_or(""),
                    model["size_bytes"],
                    model["sha256"].as_str().unwrap_or("")
                );
            }
            Ok(0)
        }
        ModelsCmd::List { api } => {
            let list: serde_json::Value = api.client()?.get("/api/v1/models").await?;
            if api.json {
                print_json(&list);
            } else {
                print_models(&list);
            }
            Ok(0)
        }
    }
}
