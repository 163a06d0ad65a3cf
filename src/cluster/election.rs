//! The rollout driver election: one key under the prefix, created under the winner's lease.
//! The key's create revision is the winner's term. Every rollout write of the driver is a
//! transaction conditioned on that term, so a driver that lost its lease (partitioned, or
//! stalled past `lease_ttl`) cannot overwrite what its successor does.

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::session::call;
use super::{lock, Cluster, ClusterError, Driver};

/// Tries to become the driver (when nobody is). Errors only when etcd does not answer.
pub(super) async fn campaign(c: &Cluster, client: &mut Client, lease: i64) -> Result<(), String> {
    let key = c.keys.driver();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            c.config.instance.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let resp = call("campaigning for rollout driver", client.txn(txn)).await?;
    if resp.succeeded() {
        let term = resp.header().map_or(0, |h| h.revision());
        tracing::info!(instance = %c.config.instance, term, "cluster: this instance drives rollouts");
        c.driver.send_replace(Driver {
            holder: Some(c.config.instance.clone()),
            term: Some(term),
        });
    }
    Ok(())
}

impl Cluster {
    /// Writes `value` at `key` if this instance still drives rollouts in `term`.
    /// `Ok(false)`: the term is over (another instance drives now).
    pub async fn fenced_put(
        &self,
        term: i64,
        key: String,
        value: Vec<u8>,
    ) -> Result<bool, ClusterError> {
        self.fenced(term, TxnOp::put(key, value, None)).await
    }

    /// Deletes `key` if this instance still drives rollouts in `term`.
    pub async fn fenced_delete(&self, term: i64, key: String) -> Result<bool, ClusterError> {
        self.fenced(term, TxnOp::delete(key, None)).await
    }

    async fn fenced(&self, term: i64, op: TxnOp) -> Result<bool, ClusterError> {
        let mut client = self.writable()?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.keys.driver(),
                CompareOp::Equal,
                term,
            )])
            .and_then([op]);
        let resp = call("writing a rollout", client.txn(txn))
            .await
            .map_err(ClusterError::Unavailable)?;
        if !resp.succeeded() {
            tracing::warn!(
                term,
                "cluster: this instance no longer drives rollouts (its term ended)"
            );
            self.driver.send_modify(|d| {
                if d.term == Some(term) {
                    d.term = None;
                }
            });
        }
        Ok(resp.succeeded())
    }

    /// Creates `key` with `value` unless it exists. `Ok(false)`: it exists.
    pub async fn create(&self, key: String, value: Vec<u8>) -> Result<bool, ClusterError> {
        let mut client = self.writable()?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = call("creating a key", client.txn(txn))
            .await
            .map_err(ClusterError::Unavailable)?;
        Ok(resp.succeeded())
    }

    /// Whoever drives rollouts now, by this instance's view.
    pub fn driver_now(&self) -> Driver {
        self.driver.borrow().clone()
    }

    /// The last error talking to etcd (for logs and answers).
    pub fn last_error(&self) -> String {
        lock(&self.last_error).clone()
    }
}
