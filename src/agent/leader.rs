//! Leader election through a `coordination.k8s.io/v1` Lease, the way client-go's
//! `leaderelection` does it: several replicas, one applies, and a leader that cannot renew
//! stops writing *before* anyone else may take over.
//!
//! Each term of leadership is a [`CancellationToken`], a child of the shutdown token. It is
//! cancelled when the Lease is lost, when renewing has failed for the renew deadline (two
//! thirds of the lease duration, so before the lease runs out for the others), or on
//! shutdown; the cluster adapter's write fence refuses every write once it is cancelled, and
//! the sources stop their pass. Another replica's lease is judged by when this one saw its
//! record change (its local clock), never by the timestamps in it, so clock skew between
//! nodes cannot hand the lease to two replicas.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot read the Lease {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot write the Lease {namespace}/{name}: {source}")]
    Write {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("no answer about the Lease {namespace}/{name} within {timeout:?}")]
    Timeout {
        namespace: String,
        name: String,
        timeout: Duration,
    },
}

/// The current term: `Some` while this replica leads.
pub type Term = Option<CancellationToken>;

/// Whether this replica leads, as a channel of terms.
pub struct Leadership {
    pub term: watch::Receiver<Term>,
    task: Option<JoinHandle<()>>,
}

/// How the election is timed, from the lease duration as client-go's defaults relate
/// (15 s lease, 10 s renew deadline, 2 s retry period).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub lease: Duration,
    /// A leader that has not renewed for this long stops writing.
    pub renew_deadline: Duration,
    /// How often the leader renews and the others look.
    pub retry_period: Duration,
}

impl Timing {
    pub fn new(lease: Duration) -> Timing {
        let lease = lease.max(Duration::from_secs(2));
        Timing {
            lease,
            renew_deadline: lease.mul_f64(2.0 / 3.0),
            retry_period: lease.div_f64(7.5),
        }
    }
}

/// What this replica may do with a Lease record it reads. Pure: `unchanged_for` is how long
/// the record has looked the same to this replica.
pub fn may_hold(
    holder: Option<&str>,
    identity: &str,
    unchanged_for: Duration,
    lease: Duration,
) -> bool {
    match holder {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => unchanged_for >= lease,
    }
}

impl Leadership {
    /// A single replica without election: one term, until shutdown.
    pub fn sole(cluster: &Cluster, shutdown: &CancellationToken) -> Leadership {
        let term = shutdown.child_token();
        cluster.fence(term.clone());
        let (sender, receiver) = watch::channel(Some(term));
        // The receiver reads the last value even after the sender is gone.
        drop(sender);
        Leadership {
            term: receiver,
            task: None,
        }
    }

    /// Joins the election for the Lease `name` in `namespace` as `identity`, until
    /// `shutdown`; then gives the Lease up so another replica takes over at once.
    pub fn elect(
        cluster: &Cluster,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
        shutdown: CancellationToken,
    ) -> Leadership {
        let (sender, receiver) = watch::channel(None);
        let elector = Elector {
            leases: Api::namespaced(cluster.client().clone(), namespace),
            cluster: cluster.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: None,
        };
        let task = tokio::spawn(elector.run(sender, shutdown));
        Leadership {
            term: receiver,
            task: Some(task),
        }
    }

    /// Waits for the election to end (after shutdown: the Lease is released by then).
    pub async fn stopped(self) {
        if let Some(task) = self.task {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "the leader election task failed");
            }
        }
    }
}

struct Elector {
    leases: Api<Lease>,
    cluster: Cluster,
    namespace: String,
    name: String,
    identity: String,
    timing: Timing,
    /// The record as last read (holder, renew time, transitions) and when it last changed.
    observed: Option<(String, Instant)>,
}

impl Elector {
    async fn run(mut self, sender: watch::Sender<Term>, shutdown: CancellationToken) {
        let mut term: Option<CancellationToken> = None;
        // When the renewal sent at that instant succeeded: a term ends by the renew
        // deadline counted from it.
        let mut renewed_at = Instant::now();
        loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => break,
                attempt = tokio::time::timeout(self.timing.retry_period, self.try_hold()) => attempt,
            };
            let held = match attempt {
                Ok(Ok(held)) => Some(held),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "leader election");
                    None
                }
                Err(_) => {
                    let err = LeaderError::Timeout {
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                        timeout: self.timing.retry_period,
                    };
                    tracing::warn!(error = %err, "leader election");
                    None
                }
            };
            match (held, &term) {
                (Some(true), None) => {
                    renewed_at = started;
                    let token = shutdown.child_token();
                    self.cluster.fence(token.clone());
                    tracing::info!(identity = self.identity, lease = self.name, "leading");
                    term = Some(token.clone());
                    sender.send_replace(Some(token));
                }
                (Some(true), Some(_)) => renewed_at = started,
                (Some(false), Some(token)) => {
                    tracing::warn!(
                        identity = self.identity,
                        "lost the Lease to another replica: standing by"
                    );
                    token.cancel();
                    term = None;
                    sender.send_replace(None);
                }
                _ => {}
            }
            // Wait for the next round; a leader's term ends at the renew deadline even when
            // the round's request is still hanging.
            let next = Instant::now() + self.timing.retry_period;
            let deadline = renewed_at + self.timing.renew_deadline;
            let leading = term.is_some();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = tokio::time::sleep_until(deadline.into()), if leading => {}
            }
            if let Some(token) = &term {
                if Instant::now() >= deadline {
                    tracing::warn!(
                        identity = self.identity,
                        deadline = ?self.timing.renew_deadline,
                        "could not renew the Lease in time: no more writes until leading again"
                    );
                    token.cancel();
                    term = None;
                    sender.send_replace(None);
                }
            }
        }
        if let Some(token) = term {
            token.cancel();
            sender.send_replace(None);
            match tokio::time::timeout(Duration::from_secs(2), self.release()).await {
                Ok(Ok(())) => tracing::info!("released the leader lease"),
                Ok(Err(err)) => tracing::warn!(error = %err, "could not release the leader lease"),
                Err(_) => tracing::warn!("could not release the leader lease in time"),
            }
        }
    }

    /// One round: reads the Lease and takes or renews it when this replica may.
    async fn try_hold(&mut self) -> Result<bool, LeaderError> {
        let now = Instant::now();
        let Some(current) = self.read().await? else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(source) => Err(self.write_error(source)),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let record = format!(
            "{:?}/{:?}/{:?}",
            spec.holder_identity, spec.renew_time, spec.lease_transitions
        );
        let unchanged_since = match &self.observed {
            Some((seen, since)) if *seen == record => *since,
            _ => now,
        };
        self.observed = Some((record, unchanged_since));
        let holder = spec.holder_identity.as_deref();
        if !may_hold(
            holder,
            &self.identity,
            now - unchanged_since,
            self.timing.lease,
        ) {
            return Ok(false);
        }
        let ours = holder == Some(self.identity.as_str());
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let mut lease = current;
        lease.spec = Some(LeaseSpec {
            acquire_time: if ours {
                spec.acquire_time.clone()
            } else {
                Some(MicroTime(now_utc()))
            },
            ..self.spec(spec.acquire_time.clone(), transitions)
        });
        // The resourceVersion read above makes this a compare-and-swap: of two replicas
        // taking an expired lease, one wins.
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(source) => Err(self.write_error(source)),
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(now_utc());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Gives the Lease up as client-go does: no holder, a one-second duration.
    async fn release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self.read().await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(now_utc()));
        self.leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(|source| self.write_error(source))
    }

    async fn read(&self) -> Result<Option<Lease>, LeaderError> {
        self.leases
            .get_opt(&self.name)
            .await
            .map_err(|source| LeaderError::Read {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            })
    }

    fn write_error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Write {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }
}

fn now_utc() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_follows_client_go_proportions() {
        let t = Timing::new(Duration::from_secs(15));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry_period, Duration::from_secs(2));
        assert!(Timing::new(Duration::ZERO).lease >= Duration::from_secs(2));
    }

    #[test]
    fn another_holder_is_waited_out_by_the_local_clock() {
        let lease = Duration::from_secs(15);
        assert!(may_hold(None, "a", Duration::ZERO, lease));
        assert!(may_hold(Some(""), "a", Duration::ZERO, lease));
        assert!(may_hold(Some("a"), "a", Duration::ZERO, lease));
        assert!(!may_hold(Some("b"), "a", Duration::from_secs(14), lease));
        assert!(may_hold(Some("b"), "a", lease, lease));
    }
}
