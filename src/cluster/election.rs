//! Rollout driver elections: one key per running rollout, `{prefix}/drivers/{id}`, created
//! under the winner's lease. The instance that starts a rollout creates its record and its
//! driver key in one transaction, so it drives first; when its lease goes, every live
//! instance campaigns and one wins. The key's create revision is the driver's *term*; every
//! write the driver makes for the rollout is a transaction conditioned on it, so a driver
//! that stalled past its lease and wakes up cannot overwrite what its successor does.

use std::sync::atomic::Ordering::SeqCst;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::commit::{Outcome, Write};
use super::etcd::call;
use super::{lock, Cluster, ClusterError};

/// Tries to become the driver of rollout `id` (when nobody is). Errors only when etcd does
/// not answer.
pub(super) async fn campaign(
    c: &Cluster,
    client: &mut Client,
    lease: i64,
    id: &str,
) -> Result<(), String> {
    let key = c.keys.driver(id);
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            c.config.instance.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let resp = call("campaigning for a rollout's driver", client.txn(txn)).await?;
    if resp.succeeded() {
        let term = resp.header().map_or(0, |h| h.revision());
        won(c, id, term);
    }
    Ok(())
}

fn won(c: &Cluster, id: &str, term: i64) {
    tracing::info!(rollout = %id, instance = %c.config.instance, term, "cluster: this instance drives the rollout");
    c.drivers.send_modify(|d| {
        d.holders.insert(id.to_string(), c.config.instance.clone());
        d.terms.insert(id.to_string(), term);
        d.mine.insert(id.to_string(), term);
    });
}

impl Cluster {
    /// Creates rollout `id` with this instance as its driver, unless a rollout with that id
    /// exists. `Ok(false)`: it exists.
    pub async fn create_rollout(&self, id: &str, record: Vec<u8>) -> Result<bool, ClusterError> {
        let lease = self.lease.load(SeqCst);
        let (key, driver) = (self.keys.rollout(id), self.keys.driver(id));
        let write = Write {
            what: format!("start of rollout {id}"),
            node: None,
            compares: vec![
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(driver.clone(), CompareOp::Equal, 0),
            ],
            ops: vec![
                TxnOp::put(key, record, None),
                TxnOp::put(
                    driver,
                    self.config.instance.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
            ],
        };
        match self.commit(write).await? {
            Outcome::Committed(c) => {
                won(self, id, c.revision);
                Ok(true)
            }
            Outcome::Refused => Ok(false),
        }
    }

    /// Writes `value` at `key` if this instance still drives rollout `id` in `term`.
    /// `Ok(false)`: the term is over (another instance drives now).
    pub async fn fenced_put(
        &self,
        id: &str,
        term: i64,
        key: String,
        value: Vec<u8>,
    ) -> Result<bool, ClusterError> {
        self.fenced(id, term, TxnOp::put(key, value, None)).await
    }

    /// Deletes `key` if this instance still drives rollout `id` in `term`.
    pub async fn fenced_delete(
        &self,
        id: &str,
        term: i64,
        key: String,
    ) -> Result<bool, ClusterError> {
        self.fenced(id, term, TxnOp::delete(key, None)).await
    }

    /// Gives up driving rollout `id` (it finished): its driver key goes.
    pub async fn release(&self, id: &str, term: i64) -> Result<bool, ClusterError> {
        let done = self.fenced_delete(id, term, self.keys.driver(id)).await?;
        self.drivers.send_modify(|d| {
            d.mine.remove(id);
        });
        Ok(done)
    }

    async fn fenced(&self, id: &str, term: i64, op: TxnOp) -> Result<bool, ClusterError> {
        let mut client = self.writable().await?;
        let txn = Txn::new().when([self.fence(id, term)]).and_then([op]);
        let resp = call("writing a rollout", client.txn(txn))
            .await
            .map_err(ClusterError::Unavailable)?;
        if !resp.succeeded() {
            tracing::warn!(rollout = %id, term, "cluster: this instance no longer drives the rollout (its term ended)");
            self.drivers.send_modify(|d| {
                if d.mine.get(id) == Some(&term) {
                    d.mine.remove(id);
                }
            });
        }
        Ok(resp.succeeded())
    }

    /// The condition every write of rollout `id`'s driver carries.
    pub(super) fn fence(&self, id: &str, term: i64) -> Compare {
        Compare::create_revision(self.keys.driver(id), CompareOp::Equal, term)
    }

    /// Creates `key` with `value` unless it exists (`what` names the write). `Ok(false)`: it
    /// exists.
    pub async fn create(
        &self,
        what: String,
        key: String,
        value: Vec<u8>,
    ) -> Result<bool, ClusterError> {
        let write = Write {
            what,
            node: None,
            compares: vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)],
            ops: vec![TxnOp::put(key, value, None)],
        };
        Ok(matches!(self.commit(write).await?, Outcome::Committed(_)))
    }

    /// Deletes `key` if it still holds `value`.
    pub async fn delete_if_unchanged(
        &self,
        key: String,
        value: Vec<u8>,
    ) -> Result<bool, ClusterError> {
        let mut client = self.writable().await?;
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, value)])
            .and_then([TxnOp::delete(key, None)]);
        let resp = call("deleting a finished rollout", client.txn(txn))
            .await
            .map_err(ClusterError::Unavailable)?;
        Ok(resp.succeeded())
    }

    /// Deletes every key under `prefix` (a finished rollout's offers).
    pub async fn delete_prefix(&self, prefix: String) -> Result<(), ClusterError> {
        let mut client = self.writable().await?;
        let options = etcd_client::DeleteOptions::new().with_prefix();
        call("deleting keys", client.delete(prefix, Some(options)))
            .await
            .map_err(ClusterError::Unavailable)?;
        Ok(())
    }

    /// Deletes `key` (a finished rollout's abort request).
    pub async fn delete(&self, key: String) -> Result<(), ClusterError> {
        let mut client = self.writable().await?;
        call("deleting a key", client.delete(key, None))
            .await
            .map_err(ClusterError::Unavailable)?;
        Ok(())
    }

    /// This instance's term for rollout `id`, while it drives it.
    pub fn term(&self, id: &str) -> Option<i64> {
        self.drivers.borrow().mine.get(id).copied()
    }

    /// The last error talking to etcd (for logs and answers).
    pub fn last_error(&self) -> String {
        lock(&self.last_error).clone()
    }
}
