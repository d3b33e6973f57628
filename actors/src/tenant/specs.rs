//! Names and supervision policies of a tenant subtree's children.
//!
//! A tenant supervisor is the generic [`vrsky_supervision::Supervisor`]. It starts with one
//! child, the tenant's TenantActor, which owns the tenant's desired state and asks the
//! supervisor to start one NatsInstanceActor per instance and one IntegrationActor per
//! integration. On every restart of the subtree the TenantActor starts again from the
//! metadata store and starts the rest.

use std::time::Duration;

use ractor::Actor;
use vrsky_supervision::{Backoff, ChildSpec, Intensity, Restart, SupervisorArgs, supervisor_child};

use crate::ids::{IntegrationId, TenantId};
use crate::integration::{IntegrationActor, IntegrationArgs};
use crate::nats_instance::{NatsInstanceActor, NatsInstanceArgs};

/// Child name of a tenant subtree under the runtime supervisor.
pub fn tenant_child_name(tenant: &TenantId) -> String {
    format!("tenant:{tenant}")
}

/// Child name of a tenant's TenantActor under its tenant supervisor.
pub fn tenant_actor_child_name(tenant: &TenantId) -> String {
    format!("tenant-actor:{tenant}")
}

/// The TenantActor as a child of its tenant supervisor: permanent, restarted with backoff
/// from 500 ms to 30 s and never escalating, so a tenant whose instances cannot start
/// (at boot or later) is retried for as long as it exists.
pub fn tenant_actor_spec(spec: ChildSpec) -> ChildSpec {
    spec.restart(Restart::Permanent)
        .backoff(Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        })
        .intensity(None)
}

/// Child name of an integration under its tenant supervisor.
pub fn integration_child_name(integration: &IntegrationId) -> String {
    format!("integration:{integration}")
}

/// Child name of a NATS instance under its tenant supervisor.
pub fn instance_child_name(tenant: &TenantId, number: u32) -> String {
    format!("nats:{tenant}-{number}")
}

/// The tenant supervisor as a child of the runtime supervisor: permanent, restarted with
/// backoff up to 30 s, and never escalating, so one tenant's failures stop at its own
/// supervisor.
pub fn tenant_supervisor_spec(args: SupervisorArgs) -> ChildSpec {
    supervisor_child(args)
        .restart(Restart::Permanent)
        .backoff(Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        })
        .intensity(None)
}

/// A NATS instance: permanent; a dead server is started again after 200 ms..10 s; more
/// than 20 restarts in 5 minutes escalate to the tenant supervisor.
pub fn instance_spec(args: NatsInstanceArgs) -> ChildSpec {
    let name = instance_child_name(&args.spec.tenant_id, args.spec.instance_number);
    ChildSpec::worker(name, move |sup| {
        let args = args.clone();
        async move {
            let (r, _) = Actor::spawn_linked(None, NatsInstanceActor, args, sup).await?;
            Ok(r.get_cell())
        }
    })
    .backoff(Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(10),
    })
    .intensity(Some(Intensity {
        max_restarts: 20,
        window: Duration::from_secs(300),
    }))
}

/// An integration: permanent; restarted after 100 ms..5 s; more than 10 restarts a minute
/// escalate to the tenant supervisor.
pub fn integration_spec(args: IntegrationArgs) -> ChildSpec {
    let name = integration_child_name(&args.integration_id);
    ChildSpec::worker(name, move |sup| {
        let args = args.clone();
        async move {
            let (r, _) = Actor::spawn_linked(None, IntegrationActor, args, sup).await?;
            Ok(r.get_cell())
        }
    })
    .backoff(Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    })
    .intensity(Some(Intensity {
        max_restarts: 10,
        window: Duration::from_secs(60),
    }))
}
