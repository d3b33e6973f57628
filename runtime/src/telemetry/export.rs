//! Runs an async span exporter from the SDK's batch thread.
//!
//! The SDK's default `BatchSpanProcessor` queues ended spans in a channel that nobody
//! waits on and wakes its thread only when a batch is full or the delay has passed. The
//! async-runtime variant instead sends every ended span to a Tokio task, a wake per span,
//! and its queue overflowed under `vrsky bench --otlp` (279,628 of 280,006 spans
//! arrived; with the batch thread, all of them). The batch thread, though, drives
//! the exporter's future with a bare executor, where the async HTTP and gRPC clients
//! cannot run (they spawn their connections onto Tokio). [`OnRuntime`] bridges the two:
//! each export runs as a task on the node's runtime, and the batch thread waits for it.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// An exporter whose exports run on a Tokio runtime, whoever polls them.
#[derive(Debug)]
pub(crate) struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> OnRuntime<E> {
    /// Wraps `inner`, running its exports on the current runtime. Panics outside one,
    /// as building the exporters themselves does.
    pub(crate) fn new(inner: E) -> OnRuntime<E> {
        OnRuntime {
            inner: Arc::new(inner),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = self.inner.clone();
        let task = self.runtime.spawn(async move { inner.export(batch).await });
        async move {
            task.await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(format!("span export task failed: {e}"))))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // The provider sets the resource once, while building, before any export holds
        // a clone of `inner`.
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.set_resource(resource),
            None => tracing::warn!("span exporter resource set after the first export; ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    /// Spans ended on runtime threads reach the exporter through the batch thread, and
    /// the export runs as a runtime task (where an async client can spawn).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exports_from_the_batch_thread_on_the_runtime() {
        #[derive(Debug, Clone)]
        struct NeedsRuntime(InMemorySpanExporter);
        impl SpanExporter for NeedsRuntime {
            async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
                // Panics off a runtime, like hyper's connection spawn.
                tokio::spawn(async {}).await.unwrap();
                self.0.export(batch).await
            }
        }
        let memory = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(OnRuntime::new(NeedsRuntime(memory.clone())))
            .build();
        let tracer = provider.tracer("t");
        for i in 0..10 {
            tracer.in_span(format!("s{i}"), |_| {});
        }
        let p = provider.clone();
        tokio::task::spawn_blocking(move || p.force_flush())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(memory.get_finished_spans().unwrap().len(), 10);
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .unwrap()
            .unwrap();
    }
}
