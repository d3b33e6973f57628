//! Metadata store: tenants, integrations and `nats_instances` (the specification's
//! schema), in PostgreSQL (production, tests) or SQLite (the embedded default).
//!
//! Both backends run the same SQL text (`$N` placeholders work in both); only the
//! migrations differ in dialect. Migrations are embedded in the binary.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Executor, SqlSafeStr};

use vrsky_actors::{IntegrationId, TenantId};

/// Metadata store errors, by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A row with the same key exists.
    #[error("already exists")]
    Conflict,
    /// The database could not be reached or answered with an error.
    #[error("database: {0}")]
    Backend(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row does not parse (should not happen: rows are validated on write).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

fn classify(e: sqlx::Error) -> DbError {
    if let Some(db) = e.as_database_error()
        && db.kind() == sqlx::error::ErrorKind::UniqueViolation
    {
        return DbError::Conflict;
    }
    DbError::Backend(e)
}

/// A tenant row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    /// Id.
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Creation time as the database prints it.
    pub created_at: String,
}

/// An integration row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationRow {
    /// Owner.
    pub tenant_id: TenantId,
    /// Id.
    pub id: IntegrationId,
    /// The spec as stored JSON.
    pub spec: String,
    /// Creation time as the database prints it.
    pub created_at: String,
    /// Which life of the id this is (see [`vrsky_actors::message::MessageState::incarnation`]);
    /// 0 for a row from before incarnations were recorded.
    pub incarnation: u64,
}

/// A `nats_instances` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// Owner.
    pub tenant_id: TenantId,
    /// 1-based instance number.
    pub instance_number: i32,
    /// `host` (Kubernetes service DNS name, port 4222) or `host:port` (local process).
    pub dns_name: String,
    /// `active`, `draining` or `terminated`.
    pub status: String,
    /// Integrations assigned to the instance.
    pub integration_count: i32,
}

impl InstanceRow {
    /// The instance's client URL.
    pub fn url(&self) -> String {
        if self.dns_name.contains(':') {
            format!("nats://{}", self.dns_name)
        } else {
            format!("nats://{}:4222", self.dns_name)
        }
    }
}

/// The store.
#[derive(Debug, Clone)]
pub enum Db {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$p` bound to whichever pool this is. The body is compiled once per
/// backend, so the same query text serves both.
macro_rules! on_pool {
    ($db:expr, |$p:ident| $body:expr) => {
        match $db {
            Db::Postgres($p) => $body,
            Db::Sqlite($p) => $body,
        }
    };
}

mod api_keys;
mod audit;
mod credentials;

pub use api_keys::ApiKeyRow;
pub use audit::{AuditEntry, AuditQuery};
pub use credentials::CredentialsRow;

/// Each backend's migrations, in order: (version, description, SQL).
type Migrations = &'static [(i64, &'static str, &'static str)];

const SQLITE_MIGRATIONS: Migrations = &[
    (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        "integration incarnation",
        include_str!("../../migrations/sqlite/0002_integration_incarnation.sql"),
    ),
    (
        3,
        "api keys and audit log",
        include_str!("../../migrations/sqlite/0003_api_keys_audit.sql"),
    ),
    (
        4,
        "nats credentials",
        include_str!("../../migrations/sqlite/0004_nats_credentials.sql"),
    ),
];

const POSTGRES_MIGRATIONS: Migrations = &[
    (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        "integration incarnation",
        include_str!("../../migrations/postgres/0002_integration_incarnation.sql"),
    ),
    (
        3,
        "api keys and audit log",
        include_str!("../../migrations/postgres/0003_api_keys_audit.sql"),
    ),
    (
        4,
        "nats credentials",
        include_str!("../../migrations/postgres/0004_nats_credentials.sql"),
    ),
];

fn migrations(sqls: Migrations) -> Migrator {
    Migrator::with_migrations(
        sqls.iter()
            .map(|(v, d, sql)| Migration::new(*v, Cow::Borrowed(*d), MigrationType::Simple, sql.into_sql_str(), false))
            .collect(),
    )
}

/// Pool size bound per runtime node.
const POOL_CONNECTIONS_MAX: u32 = 8;

type IntegrationTuple = (String, String, String, String, Option<i64>);
type InstanceTuple = (String, i32, String, String, Option<i32>);

/// A stored timestamp (`2026-12-01 05:52:13[.521123]`, UTC: SQLite's `CURRENT_TIMESTAMP`,
/// PostgreSQL's `NOW()` in a UTC session) as RFC 3339 UTC with milliseconds, the format
/// of every time the API shows (`2026-12-01T05:52:13.521Z`).
pub fn stored_time_rfc3339(text: &str) -> Result<String, DbError> {
    let corrupt = || DbError::Corrupt(format!("timestamp {text:?}"));
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let at = time::PrimitiveDateTime::parse(whole, &format)
        .map_err(|_| corrupt())?
        .assume_utc();
    let digits: String = fraction.chars().take_while(char::is_ascii_digit).take(3).collect();
    let ms = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<3}").parse::<u64>().map_err(|_| corrupt())?
    };
    let secs = u64::try_from(at.unix_timestamp()).map_err(|_| corrupt())?;
    Ok(crate::http::views::rfc3339(secs * 1000 + ms))
}

fn tenant_row((id, name, created_at): (String, String, String)) -> Result<TenantRow, DbError> {
    Ok(TenantRow {
        id: TenantId::new(id).map_err(|e| DbError::Corrupt(e.to_string()))?,
        name,
        created_at: stored_time_rfc3339(&created_at)?,
    })
}

fn integration_row((t, i, spec, created_at, incarnation): IntegrationTuple) -> Result<IntegrationRow, DbError> {
    Ok(IntegrationRow {
        tenant_id: TenantId::new(t).map_err(|e| DbError::Corrupt(e.to_string()))?,
        id: IntegrationId::new(i).map_err(|e| DbError::Corrupt(e.to_string()))?,
        spec,
        created_at: stored_time_rfc3339(&created_at)?,
        incarnation: incarnation
            .map(u64::try_from)
            .transpose()
            .map_err(|e| DbError::Corrupt(format!("incarnation: {e}")))?
            .unwrap_or(0),
    })
}

fn instance_row((t, n, dns, status, count): InstanceTuple) -> Result<InstanceRow, DbError> {
    Ok(InstanceRow {
        tenant_id: TenantId::new(t).map_err(|e| DbError::Corrupt(e.to_string()))?,
        instance_number: n,
        dns_name: dns,
        status,
        integration_count: count.unwrap_or(0),
    })
}

impl Db {
    /// Connects and runs the embedded migrations.
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .foreign_keys(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(POOL_CONNECTIONS_MAX)
                .connect_with(opts)
                .await?;
            migrations(SQLITE_MIGRATIONS).run(&pool).await?;
            Ok(Db::Sqlite(pool))
        } else {
            // Timestamps are written and read in UTC whatever the server's time zone.
            let opts = PgConnectOptions::from_str(url)?.options([("timezone", "UTC")]);
            let pool = PgPoolOptions::new()
                .max_connections(POOL_CONNECTIONS_MAX)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            migrations(POSTGRES_MIGRATIONS).run(&pool).await?;
            Ok(Db::Postgres(pool))
        }
    }

    /// Which backend, for logs and health.
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// A trivial round trip, for readiness.
    pub async fn ping(&self) -> Result<(), DbError> {
        on_pool!(self, |p| p.execute("SELECT 1").await.map(|_| ()).map_err(classify))
    }

    /// Closes the pool.
    pub async fn close(&self) {
        on_pool!(self, |p| p.close().await)
    }

    /// Creates a tenant together with its first NATS instance row, in one transaction.
    pub async fn create_tenant(&self, id: &TenantId, name: &str, first_instance_dns: &str) -> Result<(), DbError> {
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
                .bind(id.as_str())
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            sqlx::query(
                "INSERT INTO nats_instances (tenant_id, instance_number, dns_name, status, integration_count) \
                 VALUES ($1, 1, $2, 'active', 0)",
            )
            .bind(id.as_str())
            .bind(first_instance_dns)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Deletes a tenant, its integrations and its instance rows.
    pub async fn delete_tenant(&self, id: &TenantId) -> Result<bool, DbError> {
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM integrations WHERE tenant_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM nats_instances WHERE tenant_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM api_keys WHERE tenant_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM tenant_credentials WHERE tenant_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("DELETE FROM tenants WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    /// One tenant.
    pub async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRow>, DbError> {
        let row: Option<(String, String, String)> = on_pool!(self, |p| {
            sqlx::query_as("SELECT id, name, CAST(created_at AS TEXT) FROM tenants WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(p)
                .await?
        });
        row.map(tenant_row).transpose()
    }

    /// Every tenant, by id.
    pub async fn tenants(&self) -> Result<Vec<TenantRow>, DbError> {
        let rows: Vec<(String, String, String)> = on_pool!(self, |p| {
            sqlx::query_as("SELECT id, name, CAST(created_at AS TEXT) FROM tenants ORDER BY id")
                .fetch_all(p)
                .await?
        });
        rows.into_iter().map(tenant_row).collect()
    }

    /// Stores a new integration (its `incarnation` below 2^63) and counts it on the
    /// instance it is assigned to.
    pub async fn create_integration(
        &self,
        tenant: &TenantId,
        id: &IntegrationId,
        spec_json: &str,
        incarnation: u64,
    ) -> Result<(), DbError> {
        let incarnation = i64::try_from(incarnation).map_err(|e| DbError::Corrupt(format!("incarnation: {e}")))?;
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            sqlx::query("INSERT INTO integrations (tenant_id, id, spec, incarnation) VALUES ($1, $2, $3, $4)")
                .bind(tenant.as_str())
                .bind(id.as_str())
                .bind(spec_json)
                .bind(incarnation)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            sqlx::query(
                "UPDATE nats_instances SET integration_count = integration_count + 1, updated_at = CURRENT_TIMESTAMP \
                 WHERE tenant_id = $1 AND status <> 'terminated'",
            )
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Deletes an integration; false when there was none.
    pub async fn delete_integration(&self, tenant: &TenantId, id: &IntegrationId) -> Result<bool, DbError> {
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query("DELETE FROM integrations WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                sqlx::query(
                    "UPDATE nats_instances SET integration_count = integration_count - 1, updated_at = CURRENT_TIMESTAMP \
                     WHERE tenant_id = $1 AND status <> 'terminated' AND integration_count > 0",
                )
                .bind(tenant.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    /// Rewrites an integration's spec; false when there is none.
    pub async fn update_integration(
        &self,
        tenant: &TenantId,
        id: &IntegrationId,
        spec_json: &str,
    ) -> Result<bool, DbError> {
        on_pool!(self, |p| {
            sqlx::query("UPDATE integrations SET spec = $3 WHERE tenant_id = $1 AND id = $2")
                .bind(tenant.as_str())
                .bind(id.as_str())
                .bind(spec_json)
                .execute(p)
                .await
                .map(|r| r.rows_affected() > 0)
                .map_err(classify)
        })
    }

    /// One integration.
    pub async fn integration(&self, tenant: &TenantId, id: &IntegrationId) -> Result<Option<IntegrationRow>, DbError> {
        let row: Option<IntegrationTuple> = on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT tenant_id, id, spec, CAST(created_at AS TEXT), incarnation FROM integrations WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant.as_str())
            .bind(id.as_str())
            .fetch_optional(p)
            .await?
        });
        row.map(integration_row).transpose()
    }

    /// A tenant's integrations, by id.
    pub async fn integrations(&self, tenant: &TenantId) -> Result<Vec<IntegrationRow>, DbError> {
        let rows: Vec<IntegrationTuple> = on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT tenant_id, id, spec, CAST(created_at AS TEXT), incarnation FROM integrations WHERE tenant_id = $1 ORDER BY id",
            )
            .bind(tenant.as_str())
            .fetch_all(p)
            .await?
        });
        rows.into_iter().map(integration_row).collect()
    }

    /// Records a new active instance.
    pub async fn insert_instance(
        &self,
        tenant: &TenantId,
        number: i32,
        dns_name: &str,
        integration_count: i32,
    ) -> Result<(), DbError> {
        on_pool!(self, |p| {
            sqlx::query(
                "INSERT INTO nats_instances (tenant_id, instance_number, dns_name, status, integration_count) \
                 VALUES ($1, $2, $3, 'active', $4)",
            )
            .bind(tenant.as_str())
            .bind(number)
            .bind(dns_name)
            .bind(integration_count)
            .execute(p)
            .await
            .map(|_| ())
            .map_err(classify)
        })
    }

    /// Sets an instance's status (`active`, `draining`, `terminated`); false when there
    /// is no such instance.
    pub async fn set_instance_status(&self, tenant: &TenantId, number: i32, status: &str) -> Result<bool, DbError> {
        on_pool!(self, |p| {
            sqlx::query(
                "UPDATE nats_instances SET status = $3, updated_at = CURRENT_TIMESTAMP \
                 WHERE tenant_id = $1 AND instance_number = $2",
            )
            .bind(tenant.as_str())
            .bind(number)
            .bind(status)
            .execute(p)
            .await
            .map(|r| r.rows_affected() > 0)
            .map_err(classify)
        })
    }

    /// Forgets an instance that never started.
    pub async fn delete_instance(&self, tenant: &TenantId, number: i32) -> Result<(), DbError> {
        on_pool!(self, |p| {
            sqlx::query("DELETE FROM nats_instances WHERE tenant_id = $1 AND instance_number = $2")
                .bind(tenant.as_str())
                .bind(number)
                .execute(p)
                .await
                .map(|_| ())
                .map_err(classify)
        })
    }

    /// A tenant's NATS instances, by number.
    pub async fn instances(&self, tenant: &TenantId) -> Result<Vec<InstanceRow>, DbError> {
        let rows: Vec<InstanceTuple> = on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT tenant_id, instance_number, dns_name, status, integration_count FROM nats_instances \
                 WHERE tenant_id = $1 ORDER BY instance_number",
            )
            .bind(tenant.as_str())
            .fetch_all(p)
            .await?
        });
        rows.into_iter().map(instance_row).collect()
    }
}

#[cfg(test)]
mod time_tests {
    #![allow(clippy::unwrap_used)]
    use super::stored_time_rfc3339;

    #[test]
    fn stored_times_become_rfc3339_utc() {
        assert_eq!(
            stored_time_rfc3339("2026-12-01 05:52:13").unwrap(),
            "2026-12-01T05:52:13.000Z"
        );
        assert_eq!(
            stored_time_rfc3339("2026-12-01 05:52:13.521123").unwrap(),
            "2026-12-01T05:52:13.521Z"
        );
        assert_eq!(
            stored_time_rfc3339("2026-12-01 05:52:13.5").unwrap(),
            "2026-12-01T05:52:13.500Z"
        );
        assert!(stored_time_rfc3339("yesterday").is_err());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A store created before incarnations keeps its integrations, which get the oldest
    /// incarnation (1); new ones get later ones.
    #[tokio::test]
    async fn integrations_from_before_incarnations_get_the_oldest_one() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("meta.db").display());
        let old = SqlitePoolOptions::new()
            .connect_with(SqliteConnectOptions::from_str(&url).unwrap().create_if_missing(true))
            .await
            .unwrap();
        migrations(&SQLITE_MIGRATIONS[..1]).run(&old).await.unwrap();
        for sql in [
            "INSERT INTO tenants (id, name) VALUES ('t', 'T')",
            "INSERT INTO integrations (tenant_id, id, spec) VALUES ('t', 'old', '{}')",
        ] {
            sqlx::query(sql).execute(&old).await.unwrap();
        }
        old.close().await;

        let db = Db::connect(&url).await.unwrap();
        let t = TenantId::new("t").unwrap();
        let new = IntegrationId::new("new").unwrap();
        let incarnation = vrsky_actors::message::new_incarnation(vrsky_actors::now_ms());
        db.create_integration(&t, &new, "{}", incarnation).await.unwrap();
        let rows = db.integrations(&t).await.unwrap();
        let got: Vec<(&str, u64)> = rows.iter().map(|r| (r.id.as_str(), r.incarnation)).collect();
        assert_eq!(got, [("new", incarnation), ("old", 1)]);
    }

    #[tokio::test]
    async fn specs_are_rewritten_and_instances_change_status_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:{}", dir.path().join("meta.db").display()))
            .await
            .unwrap();
        let t = TenantId::new("t").unwrap();
        let i = IntegrationId::new("i").unwrap();
        db.create_tenant(&t, "T", "127.0.0.1:4001").await.unwrap();
        db.create_integration(&t, &i, "{\"v\":1}", 7).await.unwrap();
        assert!(db.update_integration(&t, &i, "{\"v\":2}").await.unwrap());
        let row = db.integration(&t, &i).await.unwrap().unwrap();
        assert_eq!(
            (row.spec.as_str(), row.incarnation),
            ("{\"v\":2}", 7),
            "the incarnation is kept"
        );
        assert!(
            !db.update_integration(&t, &IntegrationId::new("nope").unwrap(), "{}")
                .await
                .unwrap()
        );

        assert!(db.set_instance_status(&t, 1, "draining").await.unwrap());
        assert!(!db.set_instance_status(&t, 2, "draining").await.unwrap());
        let rows = db.instances(&t).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(), ["draining"]);
    }
}
