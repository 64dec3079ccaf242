//! What the shared store keeps sealed with the operator's key: the token secrets, pull
//! secrets and the CA.

use super::{PgStore, as_i64, as_u64, corrupt};
use crate::control::store::{CommitError, PullSecrets, StoreError, StoredCa};
use crate::identity::CaRecord;

impl PgStore {
    /// Keeps `sealed` under `name` in `table` unless a value is there; returns the one there.
    fn sealed_once(
        &self,
        table: &'static str,
        name: &str,
        sealed: String,
    ) -> Result<String, StoreError> {
        let name = name.to_string();
        self.call(move |c| {
            c.execute(
                &format!("INSERT INTO {table} VALUES ($1, $2) ON CONFLICT DO NOTHING"),
                &[&name, &sealed],
            )?;
            Ok(c.query_one(
                &format!("SELECT sealed FROM {table} WHERE name = $1"),
                &[&name],
            )?
            .get(0))
        })
    }

    /// A secret: made by the first replica to ask, the same for every replica after.
    pub fn secret(&self, name: &str) -> Result<String, StoreError> {
        let fresh = hex::encode(
            crate::random::secure_bytes()
                .map_err(|e| StoreError::Database(format!("no randomness: {e}")))?,
        );
        let label = format!("secret/{name}");
        let sealed = self.sealed_once(
            "weft_secrets",
            name,
            self.key.seal(&label, fresh.as_bytes())?,
        )?;
        let value = self.key.open(&label, &sealed)?;
        String::from_utf8(value)
            .ok()
            .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| corrupt(&label, "not a secret this control plane wrote"))
    }

    /// Every pull secret, by `namespace/name`.
    pub fn pull_secrets(&self) -> Result<PullSecrets, StoreError> {
        let rows: Vec<(String, String)> = self.call(|c| {
            Ok(c.query("SELECT key, sealed FROM weft_pull_secrets", &[])?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })?;
        let mut out = PullSecrets::new();
        for (key, sealed) in rows {
            let label = format!("pull-secret/{key}");
            let bytes = self.key.open(&label, &sealed)?;
            out.insert(
                key,
                serde_json::from_slice(&bytes).map_err(|e| corrupt(&label, e))?,
            );
        }
        Ok(out)
    }

    /// Keeps pull secret `key`.
    pub fn put_pull_secret(
        &self,
        key: &str,
        secret: &crate::control::pull_secrets::PullSecret,
    ) -> Result<(), StoreError> {
        let label = format!("pull-secret/{key}");
        let json = serde_json::to_vec(secret).map_err(|e| corrupt(&label, e))?;
        let sealed = self.key.seal(&label, &json)?;
        let key = key.to_string();
        self.call(move |c| {
            c.execute(
                "INSERT INTO weft_pull_secrets VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET sealed = EXCLUDED.sealed",
                &[&key, &sealed],
            )
            .map(drop)
        })
    }

    fn open_ca(&self, sealed: &str, version: i64) -> Result<StoredCa, StoreError> {
        let bytes = self.key.open("ca", sealed)?;
        Ok(StoredCa {
            record: serde_json::from_slice(&bytes).map_err(|e| corrupt("CA", e))?,
            version: as_u64(version),
        })
    }

    /// The CA, if one was kept.
    pub fn ca(&self) -> Result<Option<StoredCa>, StoreError> {
        let row: Option<(String, i64)> = self.call(|c| {
            Ok(
                c.query_opt("SELECT sealed, version FROM weft_ca WHERE id = 1", &[])?
                    .map(|r| (r.get(0), r.get(1))),
            )
        })?;
        row.map(|(sealed, version)| self.open_ca(&sealed, version))
            .transpose()
    }

    /// Keeps `record` unless a CA is there already; returns the one there.
    pub fn init_ca(&self, record: &CaRecord) -> Result<StoredCa, StoreError> {
        let json = serde_json::to_vec(record).map_err(|e| corrupt("CA", e))?;
        let sealed = self.key.seal("ca", &json)?;
        let (sealed, version): (String, i64) = self.call(move |c| {
            c.execute(
                "INSERT INTO weft_ca VALUES (1, $1, 1) ON CONFLICT DO NOTHING",
                &[&sealed],
            )?;
            let r = c.query_one("SELECT sealed, version FROM weft_ca WHERE id = 1", &[])?;
            Ok((r.get(0), r.get(1)))
        })?;
        self.open_ca(&sealed, version)
    }

    /// Replaces the CA kept at `version` with `record`; refused as stale when another
    /// replica changed it since. Returns the new version.
    pub fn save_ca(&self, version: u64, record: &CaRecord) -> Result<u64, CommitError> {
        let json = serde_json::to_vec(record).map_err(|e| corrupt("CA", e))?;
        let sealed = self.key.seal("ca", &json).map_err(StoreError::from)?;
        let expected = as_i64(version);
        let (saved, now): (Option<i64>, i64) = self.call(move |c| {
            let mut tx = c.transaction()?;
            let saved: Option<i64> = tx
                .query_opt(
                    "UPDATE weft_ca SET sealed = $1, version = version + 1 \
                     WHERE id = 1 AND version = $2 RETURNING version",
                    &[&sealed, &expected],
                )?
                .map(|r| r.get(0));
            let now: i64 = tx
                .query_one("SELECT version FROM weft_ca WHERE id = 1", &[])?
                .get(0);
            tx.batch_execute("NOTIFY weft")?;
            tx.commit()?;
            Ok((saved, now))
        })?;
        saved.map(as_u64).ok_or(CommitError::Stale {
            revision: as_u64(now),
        })
    }
}
