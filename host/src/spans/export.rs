//! The OTLP/HTTP exporter behind [`super::Exporter`]: the OpenTelemetry SDK's batch processor
//! (its own thread, a bounded queue) and OTLP exporter (protobuf), sending through the
//! sidecar's Tokio runtime with hyper, so no second HTTP stack joins the proxy.

use super::SpansError;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use prometheus::{IntCounterVec, Opts, Registry};
use std::time::Duration;

/// Spans queued at most; past it the processor drops them.
const MAX_QUEUE: usize = 2_048;
/// Spans per export request at most.
const MAX_BATCH: usize = 512;
/// How often the queue is exported when it is not full.
const EVERY: Duration = Duration::from_millis(500);
/// The largest collector answer read.
const MAX_ANSWER: usize = 64 << 10;

/// Export requests by outcome (`ok`, `failed`).
#[derive(Clone)]
pub struct ExportMetrics {
    exports: IntCounterVec,
}

impl ExportMetrics {
    /// Registers the counter.
    pub fn register(registry: &Registry) -> prometheus::Result<ExportMetrics> {
        let exports = IntCounterVec::new(
            Opts::new(
                "weft_span_exports_total",
                "Span batches sent to the trace collector, by outcome (ok, failed).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(exports.clone()))?;
        Ok(ExportMetrics { exports })
    }
}

/// An HTTP client for the exporter: each request runs as a task on the sidecar's runtime, so
/// the batch processor's thread only waits for its answer.
#[derive(Clone)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
    metrics: ExportMetrics,
}

impl std::fmt::Debug for OnRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnRuntime")
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let resp = client
                .request(Request::from_parts(parts, Full::new(body)))
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>(Response::from_parts(parts, body))
        });
        let outcome = match sent.await {
            Ok(Ok(resp)) if resp.status().is_success() => Ok(resp),
            Ok(Ok(resp)) => Err(format!("the collector answered {}", resp.status())),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("export task: {e}")),
        };
        let label = if outcome.is_ok() { "ok" } else { "failed" };
        self.metrics.exports.with_label_values(&[label]).inc();
        outcome.map_err(|e| {
            tracing::debug!("span export failed: {e}");
            e.into()
        })
    }
}

/// A tracer provider exporting to `endpoint` in bounded batches.
pub(super) fn provider(
    endpoint: &str,
    timeout: Duration,
    service: &str,
    runtime: tokio::runtime::Handle,
    metrics: ExportMetrics,
) -> Result<SdkTracerProvider, SpansError> {
    let refused = |reason: String| SpansError::Endpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    let uri: http::Uri = endpoint.parse().map_err(|e| refused(format!("{e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(refused("an http:// URL with a host is required".into()));
    }
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(timeout)
        .with_http_client(OnRuntime {
            runtime,
            client,
            metrics,
        })
        .build()
        .map_err(|e| refused(e.to_string()))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUE)
        .with_max_export_batch_size(MAX_BATCH)
        .with_scheduled_delay(EVERY)
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        // Sampling is decided per call before a span is built (see `CallTrace::begin`).
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build())
}
