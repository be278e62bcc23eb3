//! Client operations (`get put append delete cas put-hash scan`): one
//! [`Op`] through a shardkv [`Clerk`], turned into a [`Reply`] with the
//! contract's text, JSON and exit code. `shell` runs its lines through the
//! same function.

use std::time::Duration;

use serde_json::json;
use shardkv::{Clerk, ClerkError};

use super::cli::Op;
use super::{lossy, Exit, Reply};
use crate::cluster_file::ClusterFile;

/// A clerk for the cluster of `file`, with a fresh client id, whose
/// operations give up (reporting whether they may have happened) after
/// `timeout`.
pub fn clerk(file: &ClusterFile, timeout: Duration) -> Clerk {
    Clerk::new(
        file.controller_addrs(),
        crate::client::clerk_options(timeout, file.net()),
    )
}

/// The reply for an operation that did not get a definite answer.
pub fn failure(err: &ClerkError) -> Reply {
    Reply::error(Exit::Error, err.to_string(), err.is_indeterminate())
}

/// Runs `op`; never fails as a whole: every outcome is a [`Reply`].
pub async fn run(clerk: &mut Clerk, op: &Op) -> Reply {
    match op {
        Op::Get { key } => match clerk.get(key.as_bytes()).await {
            Ok(Some(value)) => {
                Reply::ok(value.clone(), json!({"ok": true, "value": lossy(&value)}))
            }
            Ok(None) => Reply::ok(Vec::new(), json!({"ok": true, "value": null}))
                .with_exit(Exit::NotFound, format!("{key}: not found")),
            Err(err) => failure(&err),
        },
        Op::Put { key, value } => done(clerk.put(key.as_bytes(), value.as_bytes()).await),
        Op::Append { key, value } => done(clerk.append(key.as_bytes(), value.as_bytes()).await),
        Op::Delete { key } => done(clerk.delete(key.as_bytes()).await),
        Op::Cas {
            key,
            values,
            absent,
        } => {
            let (expected, new) = match (values.as_slice(), absent) {
                ([new], true) => (None, new),
                ([expected, new], false) => (Some(expected.as_bytes()), new),
                _ => {
                    return Reply::error(
                        Exit::Usage,
                        "usage: cas KEY EXPECTED NEW, or cas KEY --absent NEW",
                        false,
                    )
                }
            };
            match clerk.cas(key.as_bytes(), expected, new.as_bytes()).await {
                Ok(result) if result.swapped => {
                    Reply::ok("OK", json!({"ok": true, "swapped": true}))
                }
                Ok(result) => {
                    let value = result.current.as_deref().map(lossy);
                    let note = match &result.current {
                        Some(_) => format!("{key}: the value differed (current value printed)"),
                        None => format!("{key}: the value differed (the key is absent)"),
                    };
                    Reply::ok(
                        result.current.unwrap_or_default(),
                        json!({"ok": true, "swapped": false, "value": value}),
                    )
                    .with_exit(Exit::CasMismatch, note)
                }
                Err(err) => failure(&err),
            }
        }
        Op::PutHash { key, value } => {
            match clerk.put_hash(key.as_bytes(), value.as_bytes()).await {
                Ok(previous) => {
                    let json = json!({"ok": true, "previous": previous.as_deref().map(lossy)});
                    Reply::ok(previous.unwrap_or_default(), json)
                }
                Err(err) => failure(&err),
            }
        }
        Op::Scan { start, end, limit } => {
            let start = start.as_deref().unwrap_or("");
            match clerk
                .scan(start.as_bytes(), end.as_deref().map(str::as_bytes), *limit)
                .await
            {
                Ok(items) => {
                    let mut text = Vec::new();
                    for (key, value) in &items {
                        text.extend_from_slice(key);
                        text.push(b'\t');
                        text.extend_from_slice(value);
                        text.push(b'\n');
                    }
                    let pairs: Vec<[String; 2]> =
                        items.iter().map(|(k, v)| [lossy(k), lossy(v)]).collect();
                    Reply::ok(text, json!({"ok": true, "items": pairs}))
                }
                Err(err) => failure(&err),
            }
        }
    }
}

fn done(result: Result<(), ClerkError>) -> Reply {
    match result {
        Ok(()) => Reply::ok("OK", json!({"ok": true})),
        Err(err) => failure(&err),
    }
}
