//! Destinations: which upstream and account the state's records belong to.

use rusqlite::{params, OptionalExtension};

use chrono::Utc;

use super::{set_meta, StateError, Store};

/// A destination's row id.
pub type DestId = i64;

/// What identifies a destination: the upstream and the account the data goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DestKey {
    /// The upstream's base URL, normalised (no trailing slash).
    pub base_url: String,
    /// The account at that upstream (`iss|sub` of a login, the user an upstream reports, or a
    /// keyed fingerprint of a token); never a secret.
    pub account: String,
    /// How `--status` names the account.
    pub label: String,
}

impl DestKey {
    /// The upstream at `base_url` (normalised: no trailing slash) for `account`, named by it.
    pub fn new(base_url: &str, account: &str) -> DestKey {
        DestKey {
            base_url: base_url.trim_end_matches('/').to_string(),
            account: account.to_string(),
            label: account.to_string(),
        }
    }
}

impl Store {
    /// The destination's row, made on first use. The records of a database migrated from an
    /// older schema belong to the first destination this is called for (with `write`): the one
    /// configured at the first start after the upgrade. Without `write` (a dry run, `--status`)
    /// nothing is made or claimed and an unknown destination is `None`.
    pub fn destination(&self, key: &DestKey, write: bool) -> Result<Option<DestId>, StateError> {
        let conn = self.writer();
        let found: Option<DestId> = conn
            .query_row(
                "SELECT id FROM destinations WHERE base_url = ?1 AND account = ?2",
                params![key.base_url, key.account],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        if let Some(id) = found {
            if write {
                // The account's name may have changed (a new user name at the provider).
                conn.execute(
                    "UPDATE destinations SET label = ?2 WHERE id = ?1 AND label != ?2",
                    params![id, key.label],
                )
                .map_err(self.err())?;
                set_meta(&conn, "current_dest", &id.to_string()).map_err(self.err())?;
            }
            return Ok(Some(id));
        }
        if !write {
            return Ok(None);
        }
        let claimed = conn
            .execute(
                "UPDATE destinations SET base_url = ?1, account = ?2, label = ?3
                 WHERE id = 1 AND base_url = '' AND account = ''",
                params![key.base_url, key.account, key.label],
            )
            .map_err(self.err())?;
        let id = if claimed == 1 {
            tracing::info!(upstream = %key.base_url, account = %key.label,
                "the sync state written before destinations existed now belongs to this destination");
            1
        } else {
            conn.execute(
                "INSERT INTO destinations (base_url, account, label, created) VALUES (?1, ?2, ?3, ?4)",
                params![key.base_url, key.account, key.label, Utc::now().to_rfc3339()],
            )
            .map_err(self.err())?;
            conn.last_insert_rowid()
        };
        set_meta(&conn, "current_dest", &id.to_string()).map_err(self.err())?;
        Ok(Some(id))
    }

    /// The destination the last sync ran against (what `--status` reports on), with its key.
    pub fn current_destination(&self) -> Result<Option<(DestId, DestKey)>, StateError> {
        let conn = self.reader();
        let id: Option<DestId> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'current_dest'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(self.err())?
            .and_then(|v| v.parse().ok());
        // A migrated database that has not synced since: its one (unclaimed) destination.
        let id = id.unwrap_or(1);
        conn.query_row(
            "SELECT id, base_url, account, label FROM destinations WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get(0)?,
                    DestKey {
                        base_url: r.get(1)?,
                        account: r.get(2)?,
                        label: r.get(3)?,
                    },
                ))
            },
        )
        .optional()
        .map_err(self.err())
    }

    /// Forgets everything recorded for `dest` (`--resync`): its buckets, what it acknowledged
    /// and its quarantine. The next sync sends everything again; the upstream absorbs what it
    /// already holds as duplicates.
    pub fn forget_destination(&self, dest: DestId) -> Result<u64, StateError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(self.err())?;
        let n = tx
            .execute(
                "DELETE FROM sent WHERE bucket IN (SELECT id FROM buckets WHERE dest = ?1)",
                [dest],
            )
            .map_err(self.err())?;
        tx.execute(
            "DELETE FROM quarantine WHERE bucket IN (SELECT id FROM buckets WHERE dest = ?1)",
            [dest],
        )
        .map_err(self.err())?;
        tx.execute("DELETE FROM buckets WHERE dest = ?1", [dest])
            .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(n as u64)
    }
}
