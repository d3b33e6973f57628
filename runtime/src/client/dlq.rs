//! `vrsky dlq`: a tenant's dead letters, listed, shown, replayed (one, or by filter in
//! bounded calls with a progress bar) and deleted.

use reqwest::Method;
use serde_json::{Value, json};

use super::api::seg;
use super::output::{self, chosen, print, rows};
use super::{Conn, DlqCmd, api};

/// A moment from RFC 3339 or an age before now (`30m`, `2h`, `7d`), in ms since the epoch.
pub(super) fn moment(s: &str, now_ms: u64) -> anyhow::Result<u64> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0));
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is neither RFC 3339 (2026-12-01T00:00:00Z) nor an age (30m, 2h, 7d)"))?;
    let ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!(
            "{s:?} is neither RFC 3339 (2026-12-01T00:00:00Z) nor an age: its unit is s, m, h or d (30m, 2h, 7d)"
        ),
    };
    Ok(now_ms.saturating_sub(n.saturating_mul(ms)))
}

/// Runs a `vrsky dlq` command.
pub(super) async fn run(cmd: DlqCmd, conn: &Conn) -> anyhow::Result<()> {
    let api = api(conn).await?;
    let f = chosen(conn.output);
    match cmd {
        DlqCmd::Ls { tenant, limit } => {
            let v = api
                .call(
                    Method::GET,
                    &format!("/api/tenants/{}/dead-letters?limit={limit}", seg(&tenant)),
                    None,
                )
                .await?;
            let items = v["dead_letters"].as_array().cloned().unwrap_or_default();
            print(f, &v, || {
                rows(
                    &items,
                    &["MESSAGE", "INTEGRATION", "DEAD AT", "LAST ERROR"],
                    &["message_id", "integration_id", "dead_at", "last_error"],
                )
            })
        }
        DlqCmd::Show { tenant, id } => {
            let v = api
                .call(
                    Method::GET,
                    &format!("/api/tenants/{}/dead-letters/{}", seg(&tenant), seg(&id)),
                    None,
                )
                .await?;
            print(f, &v, || output::fields(&v))
        }
        DlqCmd::Rm { tenant, id } => {
            api.call(
                Method::DELETE,
                &format!("/api/tenants/{}/dead-letters/{}", seg(&tenant), seg(&id)),
                None,
            )
            .await?;
            say!("dead letter {id} deleted");
            Ok(())
        }
        DlqCmd::Retry {
            tenant,
            id: Some(id),
            integration,
            since,
            until,
            dry_run,
        } => {
            anyhow::ensure!(
                integration.is_none() && since.is_none() && until.is_none(),
                "give a message id or a filter (--integration, --since, --until), not both"
            );
            if dry_run {
                api.call(
                    Method::GET,
                    &format!("/api/tenants/{}/dead-letters/{}", seg(&tenant), seg(&id)),
                    None,
                )
                .await?;
                say!("dead letter {id} would be replayed (dry run)");
                return Ok(());
            }
            api.call(
                Method::POST,
                &format!("/api/tenants/{}/dead-letters/{}/retry", seg(&tenant), seg(&id)),
                None,
            )
            .await?;
            say!("dead letter {id} replayed");
            Ok(())
        }
        DlqCmd::Retry {
            tenant,
            id: None,
            integration,
            since,
            until,
            dry_run,
        } => {
            let now = vrsky_actors::now_ms();
            let mut filter = json!({"dry_run": true});
            if let Some(i) = integration {
                filter["integration_id"] = json!(i);
            }
            if let Some(s) = since {
                filter["since_ms"] = json!(moment(&s, now)?);
            }
            if let Some(u) = until {
                filter["until_ms"] = json!(moment(&u, now)?);
            }
            let path = format!("/api/tenants/{}/dead-letters/retry", seg(&tenant));
            let counted = api.call(Method::POST, &path, Some(&filter)).await?;
            let matched = counted["matched"].as_u64().unwrap_or(0);
            // Every call uses the bound the count was made with (the node's clock): what
            // fails again during the run is dead-lettered after it, and not replayed twice.
            if let Some(u) = counted["until_ms"].as_u64() {
                filter["until_ms"] = json!(u);
            }
            if dry_run {
                let v = json!({"matched": matched, "replayed": 0, "dry_run": true});
                return print(f, &v, || output::fields(&v));
            }
            filter["dry_run"] = json!(false);
            let pb = indicatif::ProgressBar::new(matched);
            pb.set_style(
                indicatif::ProgressStyle::with_template("replaying {pos}/{len} dead letters {bar:30} {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let (mut replayed, mut failed) = (0u64, std::collections::BTreeMap::<String, Value>::new());
            loop {
                let r = api.call(Method::POST, &path, Some(&filter)).await?;
                let n = r["replayed"].as_u64().unwrap_or(0);
                replayed += n;
                pb.inc(n);
                // A letter that fails stays in the queue and matches again: once per id.
                for f in r["failed"].as_array().cloned().unwrap_or_default() {
                    failed.insert(output::cell(&f[0]), f[1].clone());
                }
                // More than one call replays: go on while each call moves some.
                if r["truncated"] != Value::Bool(true) || n == 0 {
                    break;
                }
            }
            pb.finish_and_clear();
            let not_tried = matched.saturating_sub(replayed + failed.len() as u64);
            let v = json!({"matched": matched, "replayed": replayed, "failed": failed, "not_attempted": not_tried});
            print(f, &v, || output::fields(&v))?;
            anyhow::ensure!(
                failed.is_empty() && not_tried == 0,
                "{} dead letters could not be replayed and {not_tried} were not attempted (see above; run it again for the rest)",
                failed.len()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn moments_are_rfc3339_or_ages() {
        let now = 1_800_000_000_000;
        assert_eq!(moment("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(moment("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(moment("2026-12-01T00:00:00Z", now).unwrap(), 1_796_083_200_000);
        assert!(
            moment("2 weeks", now)
                .unwrap_err()
                .to_string()
                .contains("neither RFC 3339")
        );
        assert!(
            moment("3w", now)
                .unwrap_err()
                .to_string()
                .contains("unit is s, m, h or d")
        );
    }
}
