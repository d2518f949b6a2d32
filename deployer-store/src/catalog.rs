//! The [`CatalogStore`](deployer_catalog::CatalogStore) implementation shared by both backends,
//! written once as a macro like the run store: the catalog document in table `catalog` under an
//! optimistic revision, monitor results in `monitor_log`.

/// Implements `CatalogStore` for `$store`, a struct with a `pool` field.
macro_rules! impl_catalog_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl deployer_catalog::CatalogStore for $store {
            async fn load_catalog(
                &self,
            ) -> Result<deployer_catalog::StoredCatalog, deployer_core::StoreError> {
                use crate::sql::RowExt as _;
                let row = sqlx::query("SELECT revision, body FROM catalog WHERE id = 1")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| crate::errors::backend("load the catalog", e))?;
                let Some(row) = row else {
                    return Ok(deployer_catalog::StoredCatalog::default());
                };
                let revision = row.int("revision")?;
                let revision = u64::try_from(revision).map_err(|_| {
                    crate::errors::corrupt(format!("catalog revision {revision} is negative"))
                })?;
                let body = row.text("body")?;
                let data =
                    deployer_catalog::CatalogData::from_json_str(&body, "the stored catalog")
                        .map_err(|e| crate::errors::corrupt(e.to_string()))?;
                Ok(deployer_catalog::StoredCatalog { revision, data })
            }

            async fn save_catalog(
                &self,
                expected_revision: u64,
                data: &deployer_catalog::CatalogData,
            ) -> Result<Option<u64>, deployer_core::StoreError> {
                let body = data.to_stored_json();
                let now = crate::sql::now_micros();
                let expected = i64::try_from(expected_revision).unwrap_or(i64::MAX);
                let new = expected.saturating_add(1);
                let done = if expected_revision == 0 {
                    sqlx::query(
                        "INSERT INTO catalog (id, revision, body, updated_ts) \
                         VALUES (1, 1, $1, $2) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(body)
                    .bind(now)
                    .execute(&self.pool)
                    .await
                } else {
                    sqlx::query(
                        "UPDATE catalog SET revision = $1, body = $2, updated_ts = $3 \
                         WHERE id = 1 AND revision = $4",
                    )
                    .bind(new)
                    .bind(body)
                    .bind(now)
                    .bind(expected)
                    .execute(&self.pool)
                    .await
                }
                .map_err(|e| crate::errors::backend("save the catalog", e))?;
                Ok((done.rows_affected() == 1).then_some(expected_revision + 1))
            }

            async fn append_monitor_log(
                &self,
                entry: &deployer_catalog::MonitorLogEntry,
            ) -> Result<(), deployer_core::StoreError> {
                sqlx::query(
                    "INSERT INTO monitor_log (monitor, ts, ok, status, duration_us, message, \
                     failure) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(entry.monitor.as_str())
                .bind(crate::sql::micros(entry.ts))
                .bind(i64::from(entry.ok))
                .bind(entry.status.map(i64::from))
                .bind(crate::sql::duration_micros(entry.duration))
                .bind(entry.message.as_str())
                .bind(entry.failure.map(deployer_catalog::CheckFailure::as_str))
                .execute(&self.pool)
                .await
                .map_err(|e| {
                    crate::errors::backend(
                        format!("append to the log of monitor {}", entry.monitor),
                        e,
                    )
                })?;
                Ok(())
            }

            async fn monitor_log(
                &self,
                monitor: &str,
                limit: usize,
            ) -> Result<Vec<deployer_catalog::MonitorLogEntry>, deployer_core::StoreError> {
                use crate::sql::RowExt as _;
                let rows = sqlx::query(
                    "SELECT ts, ok, status, duration_us, message, failure FROM monitor_log \
                     WHERE monitor = $1 ORDER BY ts DESC LIMIT $2",
                )
                .bind(monitor)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| {
                    crate::errors::backend(format!("read the log of monitor {monitor}"), e)
                })?;
                rows.iter()
                    .map(|row| {
                        let status = row
                            .opt_int("status")?
                            .map(|s| {
                                u16::try_from(s).map_err(|_| {
                                    crate::errors::corrupt(format!(
                                        "monitor {monitor}: status {s} is out of range"
                                    ))
                                })
                            })
                            .transpose()?;
                        let ok = row.int("ok")? != 0;
                        // A failure logged before migration 0004 has none: it was the target's.
                        let failure = match row.opt_text("failure")? {
                            Some(f) => {
                                Some(f.parse::<deployer_catalog::CheckFailure>().map_err(|e| {
                                    crate::errors::corrupt(format!("monitor {monitor}: {e}"))
                                })?)
                            }
                            None => (!ok).then_some(deployer_catalog::CheckFailure::Down),
                        };
                        Ok(deployer_catalog::MonitorLogEntry {
                            monitor: monitor.to_string(),
                            ts: crate::sql::time(row.int("ts")?, "monitor log ts")?,
                            ok,
                            status,
                            duration: std::time::Duration::from_micros(
                                row.int("duration_us")?.max(0).unsigned_abs(),
                            ),
                            message: row.text("message")?,
                            failure,
                        })
                    })
                    .collect()
            }

            async fn prune_monitor_log(
                &self,
                monitor: &str,
                before: std::time::SystemTime,
            ) -> Result<usize, deployer_core::StoreError> {
                let done = sqlx::query("DELETE FROM monitor_log WHERE monitor = $1 AND ts < $2")
                    .bind(monitor)
                    .bind(crate::sql::micros(before))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| {
                        crate::errors::backend(format!("prune the log of monitor {monitor}"), e)
                    })?;
                Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
            }
        }
    };
}

#[cfg(feature = "sqlite")]
impl_catalog_store!(crate::SqliteStore);
#[cfg(feature = "postgres")]
impl_catalog_store!(crate::PostgresStore);
