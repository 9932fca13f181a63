//! The agent's Prometheus metrics, as one registered struct (`GET /metrics`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::webhook::{Delivery, Event};
use crate::cluster::RequestCounter;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub source: String,
    pub result: String,
}

/// Both labels come from fixed sets, whatever a caller sends: a bounded number of series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub event: Event,
    pub result: Delivery,
}

impl EncodeLabelValue for Event {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl EncodeLabelValue for Delivery {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Every metric the agent exports; cheap to clone (the metrics are shared handles).
#[derive(Clone)]
pub struct Metrics {
    pub reconcile: Family<ResultLabels, Counter>,
    pub reconcile_duration: Family<SourceLabel, Histogram>,
    pub last_applied: Family<SourceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub drift_objects: Family<SourceLabel, Gauge>,
    pub git_fetch: Family<ResultLabels, Counter>,
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
    pub pull_requests_dropped: Family<SourceLabel, Counter>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])
}

impl Metrics {
    /// The metrics and the registry that exports them; API requests are read from the
    /// cluster client's own counter at each scrape.
    pub fn new(requests: RequestCounter) -> (Metrics, Registry) {
        let metrics = Metrics {
            reconcile: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            last_applied: Family::default(),
            drift_objects: Family::default(),
            git_fetch: Family::default(),
            webhook_deliveries: Family::default(),
            pull_requests_dropped: Family::default(),
        };
        let mut registry = Registry::with_prefix("meshops");
        registry.register(
            "reconcile",
            "Reconcile passes by source and result",
            metrics.reconcile.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long a reconcile pass took",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "last_applied_timestamp_seconds",
            "When a commit was last applied (Unix time)",
            metrics.last_applied.clone(),
        );
        registry.register(
            "drift_objects",
            "Objects that differ from the commit applied last",
            metrics.drift_objects.clone(),
        );
        registry.register(
            "git_fetch",
            "Remote head checks and fetches by source and result",
            metrics.git_fetch.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "GitHub webhook deliveries by event and result",
            metrics.webhook_deliveries.clone(),
        );
        registry.register(
            "pull_request_plans_dropped",
            "Pull requests dropped from a source's plan queue because it was full",
            metrics.pull_requests_dropped.clone(),
        );
        registry.register_collector(Box::new(ApiRequests(requests)));
        (metrics, registry)
    }

    pub fn reconciled(&self, source: &str, result: &str, seconds: f64) {
        self.reconcile
            .get_or_create(&ResultLabels {
                source: source.into(),
                result: result.into(),
            })
            .inc();
        self.reconcile_duration
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .observe(seconds);
    }

    pub fn fetched(&self, source: &str, result: &str) {
        self.git_fetch
            .get_or_create(&ResultLabels {
                source: source.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn delivery(&self, event: Event, result: Delivery) {
        self.webhook_deliveries
            .get_or_create(&WebhookLabels { event, result })
            .inc();
    }

    pub fn pull_request_dropped(&self, source: &str) {
        self.pull_requests_dropped
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .inc();
    }

    pub fn drift(&self, source: &str, objects: usize) {
        self.drift_objects
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .set(objects as i64);
    }

    pub fn applied_at(&self, source: &str, unix_seconds: f64) {
        self.last_applied
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .set(unix_seconds);
    }
}

/// `meshops_api_requests_total{verb}` from the counter every request to the API server
/// already goes through.
#[derive(Debug)]
struct ApiRequests(RequestCounter);

impl Collector for ApiRequests {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "api_requests",
            "Requests sent to the Kubernetes API server, by verb",
            None,
            counter.metric_type(),
        )?;
        for (verb, count) in self.0.snapshot() {
            let labels = [("verb", verb)];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        let retries = ConstCounter::new(self.0.retries());
        retries.encode(encoder.encode_descriptor(
            "api_retries",
            "Requests to the Kubernetes API server sent again by the retry layer",
            None,
            retries.metric_type(),
        )?)?;
        Ok(())
    }
}

/// `meshops_report_queue_depth` and `meshops_report_dropped_total`: GitHub reports waiting in
/// the queue (GitHub slow or down shows here first) and those dropped because a source's
/// backlog was full.
pub fn register_reports(registry: &mut Registry, queue: std::sync::Arc<crate::report::Queue>) {
    registry.register_collector(Box::new(Reports(queue)));
}

struct Reports(std::sync::Arc<crate::report::Queue>);

impl std::fmt::Debug for Reports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reports")
            .field("depth", &self.0.depth())
            .finish()
    }
}

impl Collector for Reports {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let depth = ConstGauge::new(self.0.depth() as i64);
        depth.encode(encoder.encode_descriptor(
            "report_queue_depth",
            "GitHub reports waiting to be sent",
            None,
            depth.metric_type(),
        )?)?;
        let dropped = ConstCounter::new(self.0.dropped());
        dropped.encode(encoder.encode_descriptor(
            "report_dropped",
            "GitHub reports dropped because a source's backlog was full",
            None,
            dropped.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
