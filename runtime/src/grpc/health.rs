//! gRPC health that follows the node's readiness: the overall service (`""`) and every
//! VRSky service say `SERVING` while `/readyz` would answer 200 (the metadata store, the
//! platform NATS and every tenant's NATS answer) and `NOT_SERVING` otherwise, re-read
//! every [`READINESS_POLL`]. A gRPC client or a Kubernetes `grpc` probe thus sees what an
//! HTTP probe sees.

use std::future::Future;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often gRPC health re-reads the node's readiness.
pub(super) const READINESS_POLL: Duration = Duration::from_secs(2);

/// Sets every service's status (the overall one, `""`, included).
pub(super) async fn set_all(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in super::SERVICES {
        health.set_service_status(*service, status).await;
    }
}

/// Re-reads readiness with `probe` every `every` and sets the statuses when it changes,
/// until the task is aborted (at shutdown, before `NOT_SERVING` is set for good).
pub(super) async fn follow<F, Fut>(health: HealthReporter, every: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut serving = true;
    loop {
        tokio::time::sleep(every).await;
        let ready = probe().await;
        if ready != serving {
            serving = ready;
            let status = if ready {
                tracing::info!("node ready again; gRPC health SERVING");
                ServingStatus::Serving
            } else {
                tracing::warn!("node not ready (see /readyz); gRPC health NOT_SERVING");
                ServingStatus::NotServing
            };
            set_all(&health, status).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_server::Health;
    use tonic_health::pb::{HealthCheckRequest, health_check_response};

    use super::*;

    async fn status(svc: &impl Health, service: &str) -> health_check_response::ServingStatus {
        let req = tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        });
        Wire::try_from(svc.check(req).await.unwrap().into_inner().status).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn health_follows_readiness_both_ways_for_every_service() {
        let health = HealthReporter::new();
        let svc = tonic_health::server::HealthService::from_health_reporter(health.clone());
        set_all(&health, ServingStatus::Serving).await;
        // Ready, not ready twice, ready again: one reading per poll.
        let script = Arc::new(Mutex::new(vec![true, false, false, true]));
        let probe = {
            let script = script.clone();
            move || {
                let mut s = script.lock().unwrap();
                let next = if s.len() > 1 { s.remove(0) } else { s[0] };
                async move { next }
            }
        };
        let task = tokio::spawn(follow(health, Duration::from_secs(2), probe));
        let every = ["", "vrsky.v1.TenantService", "vrsky.v1.ActorTreeService"];
        let at = |secs: u64| tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(secs));
        at(3).await; // after the first reading (ready)
        for s in every {
            assert_eq!(status(&svc, s).await, Wire::Serving, "{s}");
        }
        at(2).await; // after the second (not ready)
        for s in every {
            assert_eq!(status(&svc, s).await, Wire::NotServing, "{s}");
        }
        at(4).await; // after the fourth (ready again)
        for s in every {
            assert_eq!(status(&svc, s).await, Wire::Serving, "{s}");
        }
        task.abort();
    }
}
