//! Every NATS subject VRSky uses is built here, and only here, from validated ids.

use crate::ids::{IntegrationId, TenantId};

/// Where ingress publishes an integration's messages on the tenant's NATS instance.
pub fn integration_inbox(tenant: &TenantId, integration: &IntegrationId) -> String {
    format!("vrsky.t.{tenant}.i.{integration}.in")
}

/// The queue group that makes each message go to one worker across runtime nodes.
pub fn integration_queue_group(integration: &IntegrationId) -> String {
    format!("vrsky-workers-{integration}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn subjects_have_fixed_token_layout() {
        let t = TenantId::new("acme").unwrap();
        let i = IntegrationId::new("orders-1").unwrap();
        assert_eq!(integration_inbox(&t, &i), "vrsky.t.acme.i.orders-1.in");
        assert_eq!(integration_queue_group(&i), "vrsky-workers-orders-1");
    }
}
