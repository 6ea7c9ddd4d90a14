//! `coordinator tokens create | list | revoke`: API tokens, on the database directly (whoever
//! can open the database administers the coordinator anyway).

use anyhow::bail;

use super::args::{DbArgs, TokensCmd};
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
