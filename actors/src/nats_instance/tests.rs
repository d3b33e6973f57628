//! The NatsInstanceActor alone, over a fake provisioner, under the generic supervisor.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use vrsky_supervision::{SupervisorArgs, SupervisorExt, spawn_root};

use super::*;
use crate::fakes::FakeProvisioner;
use crate::ids::TenantId;
use crate::tenant::instance_spec;

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..250 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}");
}

/// Started: healthy. The instance exits: unhealthy at once, and the supervisor restarts
/// the actor, which starts the instance again: healthy again.
#[tokio::test]
async fn an_instance_that_exits_is_marked_down_and_started_again() {
    let provisioner = Arc::new(FakeProvisioner::new("nats://127.0.0.1:1"));
    let health = Arc::new(InstanceHealth::default());
    let args = NatsInstanceArgs {
        spec: InstanceSpec {
            tenant_id: TenantId::new("acme").unwrap(),
            instance_number: 1,
            client_port: 1,
        },
        provisioner: provisioner.clone(),
        health: health.clone(),
        health_interval: Duration::from_secs(3600),
    };
    let (sup, _) = spawn_root(SupervisorArgs::empty("tenant:acme")).await.unwrap();
    sup.start_child(instance_spec(args)).await.unwrap();
    assert_eq!(provisioner.starts(), 1);
    assert!(health.is_healthy());

    provisioner.exit_last("killed by the test");
    eventually("marked unhealthy", || !health.is_healthy()).await;
    eventually("started again", || provisioner.starts() == 2 && health.is_healthy()).await;
    let tree = sup.tree().await.unwrap();
    assert_eq!(tree.find("nats:acme-1").unwrap().restarts, 1);
    sup.stop(None);
}
