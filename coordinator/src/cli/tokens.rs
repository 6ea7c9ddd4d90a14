//! `coordinator tokens create | list | revoke`: API tokens, and `coordinator pki`: the CA, on the
//! database and data folder directly (whoever can open them administers the coordinator
//! anyway).

use anyhow::bail;

use super::args::{DbArgs, PkiCmd, TokensCmd};
use super::print::{print_json, print_tokens};
use crate::api::auth::{Role, create_token};
use crate::db::Db;

async fn open(db: &DbArgs) -> anyhow::Result<Db> {
    let url = db
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rw", db.data_dir.join("hone.db").display()));
    Ok(Db::open(&url).await?)
}

pub(super) async fn run(cmd: TokensCmd) -> anyhow::Result<i32> {
    let now = hone_common::clock::now_ms() as i64;
    match cmd {
        TokensCmd::Create { db, role, name, json } => {
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            let db = open(&db).await?;
            let new = create_token(&db, role, &name, now).await?;
            db.close().await;
            if json {
                print_json(&serde_json::json!({
                    "id": new.id, "role": role.as_str(), "name": name, "token": new.token,
                }));
            } else {
                eprintln!(
                    "created {} token {} ({name}); it is shown only once:",
                    role.as_str(),
                    new.id
                );
                println!("{}", new.token);
            }
            Ok(0)
        }
        TokensCmd::List { db, json } => {
            let db = open(&db).await?;
            let tokens = db.tokens().await?;
            db.close().await;
            if json {
                print_json(&serde_json::to_value(&tokens)?);
            } else {
                print_tokens(&tokens);
            }
            Ok(0)
        }
        TokensCmd::Revoke { db, id } => {
            let db = open(&db).await?;
            let revoked = db.revoke_token(&id, now).await?;
            db.close().await;
            if !revoked {
                bail!("no active token `{id}` (see `coordinator tokens list`)");
            }
            eprintln!("revoked {id}");
            Ok(0)
        }
    }
}

pub(super) async fn pki(cmd: PkiCmd) -> anyhow::Result<i32> {
    match cmd {
        PkiCmd::Show { db, json } => {
            let ca = crate::pki::Ca::load_or_create(&db.data_dir.join("pki"))?;
            if json {
                print_json(&serde_json::json!({
                    "sha256": ca.fingerprint(), "ca_pem": ca.cert_pem(),
                }));
            } else {
                println!("{}", ca.fingerprint());
            }
            Ok(0)
        }
        PkiCmd::RotateCa { db, json } => {
            let dir = db.data_dir.join("pki");
            if let Some(pid) = running_coordinator(&db.data_dir) {
                anyhow::bail!(
                    "a coordinator (pid {pid}) is using {}: stop it, rotate, then start it",
                    db.data_dir.display()
                );
            }
            let (old, new) = crate::pki::Ca::rotate(&dir)?;
            if json {
                print_json(&serde_json::json!({ "previous_sha256": old, "sha256": new }));
            } else {
                eprintln!(
                    "rotated the CA: {new} signs from now on; {old} stays trusted for the \
                     certificates it issued, and devices move to the new CA at their next \
                     renewal. New enrolments pin {new}."
                );
                println!("{new}");
            }
            Ok(0)
        }
        PkiCmd::Mosquitto { db: args, out, names, port } => {
            // Before the coordinator's first start too: the operator may set up the broker
            // first (the database and the CA are then created here).
            std::fs::create_dir_all(&args.data_dir)?;
            let url = args.database_url.clone().unwrap_or_else(|| {
                format!("sqlite://{}?mode=rwc", args.data_dir.join("hone.db").display())
            });
            let db = Db::open(&url).await?;
            let now = hone_common::clock::now_ms() as i64;
            let revoked: Vec<_> = db
                .revoked_certs(now)
                .await?
                .into_iter()
                .map(|c| {
                    let at_ms = c.revoked_at_ms.unwrap_or(0);
                    (crate::pki::Revoked { serial: c.serial, at_ms }, c.fingerprint)
                })
                .collect();
            db.close().await;
            let pki = crate::pki::Pki::start(
                &args.data_dir.join("pki"),
                &[],
                crate::pki::DEFAULT_CERT_LIFETIME,
                &revoked,
            )?;
            let written = pki.write_mosquitto_config(&out, &names, port)?;
            for p in &written {
                eprintln!("wrote {}", p.display());
            }
            eprintln!(
                "include {} from Mosquitto's configuration; {} revoked certificate(s) in crl.pem",
                out.join("mosquitto.conf").display(),
                revoked.len()
            );
            Ok(0)
        }
    }
}

/// The pid of a coordinator serving from `data_dir`, if one runs on this host (its
/// `coordinator.pid` names a live process).
fn running_coordinator(data_dir: &std::path::Path) -> Option<u32> {
    let pid: u32 =
        std::fs::read_to_string(data_dir.join("coordinator.pid")).ok()?.trim().parse().ok()?;
    std::path::Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}
