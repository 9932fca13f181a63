//! Leader election through a `coordination.k8s.io/v1` Lease (kube-lease-manager): several
//! replicas, one applies. The others wait, report not ready (so the Service sends webhooks to
//! the leader) and take over within the lease duration when the leader stops renewing.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot use the Lease {namespace}/{name} for leader election: {source}")]
    Lease {
        namespace: String,
        name: String,
        source: kube_lease_manager::LeaseManagerError,
    },
}

/// Whether this replica leads, as a channel; [`Leadership::release`] gives the lease up.
pub struct Leadership {
    pub is_leader: watch::Receiver<bool>,
    task: Option<JoinHandle<kube_lease_manager::Result<LeaseManager>>>,
}

impl Leadership {
    /// A single replica without election: always the leader.
    pub fn sole() -> Leadership {
        let (sender, is_leader) = watch::channel(true);
        // The receiver reads the last value even after the sender is gone.
        drop(sender);
        Leadership {
            is_leader,
            task: None,
        }
    }

    /// Joins the election for `name` in `namespace` as `identity`. The lease lasts
    /// `duration`; the holder renews it a third of that before it runs out.
    pub async fn elect(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Result<Leadership, LeaderError> {
        let seconds = duration.as_secs().max(3);
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(seconds)
            .with_grace((seconds / 3).max(1))
            .with_field_manager("meshops-agent")
            .build()
            .await
            .map_err(|source| LeaderError::Lease {
                namespace: namespace.into(),
                name: name.into(),
                source,
            })?;
        let (is_leader, task) = manager.watch().await;
        Ok(Leadership {
            is_leader,
            task: Some(task),
        })
    }

    /// Gives the lease up (the manager releases it when its channel closes), so another
    /// replica takes over at once rather than after the lease runs out.
    pub async fn release(self) {
        let Leadership { is_leader, task } = self;
        drop(is_leader);
        if let Some(task) = task {
            match task.await {
                Ok(Ok(_)) => tracing::info!("released the leader lease"),
                Ok(Err(err)) => tracing::warn!(error = %err, "could not release the leader lease"),
                Err(err) => tracing::warn!(error = %err, "the leader election task failed"),
            }
        }
    }
}
