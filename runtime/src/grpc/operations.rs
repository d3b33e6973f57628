//! Which REST operation each RPC is: the gateway builds its calls from this table, and
//! the completeness test checks it against the REST router's own list
//! ([`crate::http::api_routes`]) and the .proto services, both ways.

use axum::http::Method;

/// One unary RPC and the REST operation it runs.
#[derive(Debug)]
pub(crate) struct Op {
    /// `package.Service/Method`.
    pub rpc: &'static str,
    /// The REST method.
    pub method: Method,
    /// The REST route under `/api`, with `{..}` for each path parameter.
    pub route: &'static str,
}

impl Op {
    /// Whether `path` (under `/api`, no query) is this operation's route, and its
    /// parameters in order when it is.
    pub(crate) fn matches<'a>(&self, method: &Method, path: &'a str) -> Option<Vec<&'a str>> {
        if *method != self.method {
            return None;
        }
        let (want, got): (Vec<&str>, Vec<&str>) = (self.route.split('/').collect(), path.split('/').collect());
        if want.len() != got.len() {
            return None;
        }
        let mut args = Vec::new();
        for (w, g) in want.iter().zip(&got) {
            if w.starts_with('{') {
                args.push(*g);
            } else if w != g {
                return None;
            }
        }
        Some(args)
    }

    /// The route with its parameters filled in, in order, each one percent-encoded.
    pub(crate) fn path(&self, args: &[&str]) -> String {
        let mut out = String::with_capacity(self.route.len() + 16);
        let mut args = args.iter();
        for (i, part) in self.route.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            if part.starts_with('{') {
                out.push_str(&super::rest::segment(args.next().copied().unwrap_or("")));
            } else {
                out.push_str(part);
            }
        }
        out
    }
}

macro_rules! ops {
    ($($name:ident = $rpc:literal, $method:ident $route:literal;)*) => {
        $(pub(crate) const $name: Op = Op { rpc: $rpc, method: Method::$method, route: $route };)*
        /// Every unary RPC of the gateway.
        pub(crate) const ALL: &[&Op] = &[$(&$name),*];
    };
}

ops! {
    LIST_TENANTS = "vrsky.v1.TenantService/ListTenants", GET "/tenants";
    GET_TENANT = "vrsky.v1.TenantService/GetTenant", GET "/tenants/{t}";
    CREATE_TENANT = "vrsky.v1.TenantService/CreateTenant", POST "/tenants";
    DELETE_TENANT = "vrsky.v1.TenantService/DeleteTenant", DELETE "/tenants/{t}";
    GET_TENANT_STATS = "vrsky.v1.TenantService/GetTenantStats", GET "/tenants/{t}/stats";
    ROTATE_CREDENTIALS = "vrsky.v1.TenantService/RotateCredentials", POST "/tenants/{t}/credentials/rotate";
    LIST_INTEGRATIONS = "vrsky.v1.IntegrationService/ListIntegrations", GET "/tenants/{t}/integrations";
    GET_INTEGRATION = "vrsky.v1.IntegrationService/GetIntegration", GET "/tenants/{t}/integrations/{i}";
    CREATE_INTEGRATION = "vrsky.v1.IntegrationService/CreateIntegration", POST "/tenants/{t}/integrations";
    UPDATE_INTEGRATION = "vrsky.v1.IntegrationService/UpdateIntegration", PUT "/tenants/{t}/integrations/{i}";
    DELETE_INTEGRATION = "vrsky.v1.IntegrationService/DeleteIntegration", DELETE "/tenants/{t}/integrations/{i}";
    LIST_NATS_INSTANCES = "vrsky.v1.NatsInstanceService/ListNatsInstances", GET "/tenants/{t}/nats-instances";
    ADD_NATS_INSTANCE = "vrsky.v1.NatsInstanceService/AddNatsInstance", POST "/tenants/{t}/nats-instances";
    DRAIN_NATS_INSTANCE = "vrsky.v1.NatsInstanceService/DrainNatsInstance", POST "/tenants/{t}/nats-instances/{n}/drain";
    REMOVE_NATS_INSTANCE = "vrsky.v1.NatsInstanceService/RemoveNatsInstance", DELETE "/tenants/{t}/nats-instances/{n}";
    GET_MESSAGE = "vrsky.v1.MessageService/GetMessage", GET "/tenants/{t}/messages/{id}";
    LIST_MESSAGES = "vrsky.v1.MessageService/ListMessages", GET "/tenants/{t}/integrations/{i}/messages";
    LIST_DEAD_LETTERS = "vrsky.v1.DeadLetterService/ListDeadLetters", GET "/tenants/{t}/dead-letters";
    GET_DEAD_LETTER = "vrsky.v1.DeadLetterService/GetDeadLetter", GET "/tenants/{t}/dead-letters/{id}";
    REPLAY_DEAD_LETTER = "vrsky.v1.DeadLetterService/ReplayDeadLetter", POST "/tenants/{t}/dead-letters/{id}/retry";
    REPLAY_DEAD_LETTERS = "vrsky.v1.DeadLetterService/ReplayDeadLetters", POST "/tenants/{t}/dead-letters/retry";
    DELETE_DEAD_LETTER = "vrsky.v1.DeadLetterService/DeleteDeadLetter", DELETE "/tenants/{t}/dead-letters/{id}";
    CREATE_API_KEY = "vrsky.v1.ApiKeyService/CreateApiKey", POST "/tenants/{t}/api-keys";
    LIST_API_KEYS = "vrsky.v1.ApiKeyService/ListApiKeys", GET "/tenants/{t}/api-keys";
    REVOKE_API_KEY = "vrsky.v1.ApiKeyService/RevokeApiKey", DELETE "/tenants/{t}/api-keys/{id}";
    LIST_AUDIT_ENTRIES = "vrsky.v1.AuditService/ListAuditEntries", GET "/audit";
    GET_ACTOR_TREE = "vrsky.v1.ActorTreeService/GetActorTree", GET "/tree";
    GET_CLUSTER = "vrsky.v1.ClusterService/GetCluster", GET "/cluster";
}

/// RPCs with no REST operation of their own (streams).
#[cfg(test)]
pub(crate) const STREAMS: &[&str] = &["vrsky.v1.ActorTreeService/WatchActorTree"];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_fill_in_encoded_parameters() {
        assert_eq!(
            GET_INTEGRATION.path(&["acme", "orders"]),
            "/tenants/acme/integrations/orders"
        );
        assert_eq!(
            GET_MESSAGE.path(&["acme", "a/../b"]),
            "/tenants/acme/messages/a%2F..%2Fb"
        );
        assert_eq!(LIST_TENANTS.path(&[]), "/tenants");
    }

    /// Every REST operation has its RPC, and every RPC is a REST operation or a stream:
    /// adding a route to the router, an RPC to the .proto files, or an entry here without
    /// the others fails this test.
    #[test]
    fn every_rest_operation_has_its_rpc_and_every_rpc_is_served() {
        let rest: Vec<(Method, &str)> = crate::http::api_routes().into_iter().map(|(m, p, _)| (m, p)).collect();
        for (m, p) in &rest {
            assert!(
                ALL.iter().any(|o| o.method == *m && o.route == *p),
                "REST {m} /api{p} has no RPC in grpc/operations.rs"
            );
        }
        for o in ALL {
            assert!(
                rest.iter().any(|(m, p)| *m == o.method && *p == o.route),
                "{} names {} /api{}, which the router does not serve",
                o.rpc,
                o.method,
                o.route
            );
        }
        let pool = prost_reflect::DescriptorPool::decode(crate::grpc::pb::DESCRIPTOR_SET).unwrap();
        let mut in_proto = Vec::new();
        for s in pool.services() {
            for m in s.methods() {
                in_proto.push(format!("{}/{}", s.full_name(), m.name()));
            }
        }
        for rpc in &in_proto {
            assert!(
                ALL.iter().any(|o| o.rpc == rpc) || STREAMS.contains(&rpc.as_str()),
                "{rpc} is in the .proto files but not in grpc/operations.rs"
            );
        }
        for o in ALL {
            assert!(
                in_proto.iter().any(|r| r == o.rpc),
                "{} is not in the .proto files",
                o.rpc
            );
        }
    }
}
