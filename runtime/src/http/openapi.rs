//! `GET /api/openapi.json` (no token): the OpenAPI 3.1 document of the REST API, built
//! from the router's own operation list ([`super::api_routes`]) and a description of each
//! (`doc`), with the views' schemas derived from their types. A test fails when an
//! operation has no description, so the document cannot miss a route.

use axum::Json;
use axum::http::Method;
use axum::response::IntoResponse;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ComponentsBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required, ResponseBuilder, Schema,
};

use super::views;

/// What the document says of one operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Doc {
    /// One line.
    pub summary: &'static str,
    /// The status of success, and what it carries (a component's name, or none).
    pub ok: (u16, Option<&'static str>),
    /// Its request body's schema (a component's name), if it takes one.
    pub body: Option<&'static str>,
    /// Its query parameters.
    pub query: &'static [&'static str],
}

const fn d(summary: &'static str, ok: u16, answer: Option<&'static str>) -> Doc {
    Doc {
        summary,
        ok: (ok, answer),
        body: None,
        query: &[],
    }
}

/// The description of each REST operation; `None` for one the document does not know.
pub(crate) fn doc(method: &Method, route: &str) -> Option<Doc> {
    let with_body = |mut x: Doc, b: &'static str| {
        x.body = Some(b);
        x
    };
    let with_query = |mut x: Doc, q: &'static [&'static str]| {
        x.query = q;
        x
    };
    Some(match (method.as_str(), route) {
        ("POST", "/tenants") => with_body(
            d("Create a tenant and start its NATS", 201, Some("Tenant")),
            "CreateTenant",
        ),
        ("GET", "/tenants") => d("List tenants", 200, Some("TenantList")),
        ("GET", "/tenants/{t}") => d("A tenant", 200, Some("Tenant")),
        ("DELETE", "/tenants/{t}") => d("Delete a tenant, its NATS and its messages", 204, None),
        ("POST", "/tenants/{t}/integrations") => with_body(
            d("Create an integration", 201, Some("IntegrationView")),
            "IntegrationSpec",
        ),
        ("GET", "/tenants/{t}/integrations") => d("List a tenant's integrations", 200, Some("IntegrationList")),
        ("GET", "/tenants/{t}/integrations/{i}") => d("An integration", 200, Some("IntegrationView")),
        ("PUT", "/tenants/{t}/integrations/{i}") => with_body(
            d(
                "Replace an integration's spec (messages already accepted are delivered by the spec current at delivery)",
                200,
                Some("IntegrationView"),
            ),
            "IntegrationSpec",
        ),
        ("DELETE", "/tenants/{t}/integrations/{i}") => d("Delete an integration", 204, None),
        ("GET", "/tenants/{t}/integrations/{i}/messages") => with_query(
            d(
                "An integration's recent messages, newest first",
                200,
                Some("MessagePage"),
            ),
            &["limit", "status", "cursor"],
        ),
        ("GET", "/tenants/{t}/nats-instances") => d(
            "The tenant's usable NATS instances (discovery)",
            200,
            Some("InstanceList"),
        ),
        ("POST", "/tenants/{t}/nats-instances") => d("Add a NATS instance", 201, Some("InstanceView")),
        ("DELETE", "/tenants/{t}/nats-instances/{n}") => d("Stop a drained NATS instance", 204, None),
        ("POST", "/tenants/{t}/nats-instances/{n}/drain") => d("Drain a NATS instance", 200, Some("InstanceView")),
        ("GET", "/tenants/{t}/stats") => d("The tenant's figures on this node", 200, Some("TenantStatsView")),
        ("GET", "/tenants/{t}/messages/{id}") => d("Where a message is", 200, Some("MessageView")),
        ("GET", "/tenants/{t}/dead-letters") => with_query(
            d("The dead-letter queue, newest first", 200, Some("DeadLetterPage")),
            &["limit", "cursor"],
        ),
        ("POST", "/tenants/{t}/dead-letters/retry") => with_body(
            d(
                "Replay the dead letters a filter matches (200 with dry_run, else 202)",
                202,
                Some("ReplayReport"),
            ),
            "ReplayFilter",
        ),
        ("GET", "/tenants/{t}/dead-letters/{id}") => d("A dead letter, with its payload", 200, Some("DeadLetterView")),
        ("DELETE", "/tenants/{t}/dead-letters/{id}") => d("Delete a dead letter", 204, None),
        ("POST", "/tenants/{t}/dead-letters/{id}/retry") => {
            d("Replay a dead letter (same id, attempts reset)", 202, None)
        }
        ("POST", "/tenants/{t}/api-keys") => d("Create a tenant API key (shown this once)", 201, None),
        ("GET", "/tenants/{t}/api-keys") => d("List a tenant's API keys (never the keys)", 200, None),
        ("DELETE", "/tenants/{t}/api-keys/{id}") => d("Revoke an API key", 204, None),
        ("POST", "/tenants/{t}/credentials/rotate") => {
            d("New NATS users for the tenant; older ones revoked", 200, None)
        }
        ("GET", "/tree") => d("The live supervision tree", 200, None),
        ("GET", "/cluster") => d("The nodes, the tenants each holds and their lease ages", 200, None),
        ("GET", "/audit") => with_query(d("The audit log", 200, None), &["tenant", "since", "after", "limit"]),
        _ => return None,
    })
}

fn object(description: &str) -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(description))
            .build(),
    )
}

fn string() -> Schema {
    Schema::Object(ObjectBuilder::new().schema_type(Type::String).build())
}

fn json(schema: RefOr<Schema>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

/// The document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for (method, route, _) in super::api_routes() {
        // An operation without a description is still listed (the test catches it).
        let doc = doc(&method, route).unwrap_or(d("", 200, None));
        let mut op = OperationBuilder::new()
            .operation_id(Some(format!("{} {route}", method.as_str())))
            .summary(Some(doc.summary))
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        for param in route.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')) {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(param)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(string())),
            );
        }
        for q in doc.query {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(*q)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .schema(Some(string())),
            );
        }
        if let Some(b) = doc.body {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json(Ref::from_schema_name(b).into()))
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        let (status, answer) = doc.ok;
        let mut ok = ResponseBuilder::new().description("Success");
        if let Some(a) = answer {
            ok = ok.content("application/json", json(Ref::from_schema_name(a).into()));
        }
        op = op.response(status.to_string(), ok.build());
        let error = ResponseBuilder::new()
            .description("Refused: `{\"error\": {\"code\", \"message\"}}` (400, 401, 403, 404, 409, 429, 503)")
            .content("application/json", json(Ref::from_schema_name("Error").into()))
            .build();
        op = op.response("default", error);
        let m = match method {
            Method::GET => HttpMethod::Get,
            Method::POST => HttpMethod::Post,
            Method::PUT => HttpMethod::Put,
            Method::DELETE => HttpMethod::Delete,
            _ => HttpMethod::Patch,
        };
        paths = paths.path(format!("/api{route}"), PathItem::new(m, op));
    }
    let components = ComponentsBuilder::new()
        .schema_from::<views::MessageView>()
        .schema_from::<views::AttemptView>()
        .schema_from::<views::DeadLetterSummaryView>()
        .schema_from::<views::DeadLetterView>()
        .schema_from::<views::PayloadRefView>()
        .schema_from::<views::IntegrationView>()
        .schema_from::<views::InstanceView>()
        .schema_from::<views::TenantStatsView>()
        .schema_from::<views::InstanceCounts>()
        .schema("Error", object("`{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`"))
        .schema("Tenant", object("`{\"id\", \"name\", \"created_at\"}`"))
        .schema("TenantList", object("`{\"tenants\": [Tenant]}`"))
        .schema("CreateTenant", object("`{\"id\", \"name\"}`; ids match ^[a-z0-9][a-z0-9-]{0,62}$"))
        .schema(
            "IntegrationSpec",
            object("An integration: `id`, `consumer`, `filters`, `converters`, `producer`, `retry`, `max_in_flight` (see the README)"),
        )
        .schema("IntegrationList", object("`{\"integrations\": [IntegrationView]}`"))
        .schema("InstanceList", object("`{\"tenant_id\", \"nats_instances\": [InstanceView]}`"))
        .schema("MessagePage", object("`{\"tenant_id\", \"integration_id\", \"messages\": [MessageView], \"next_cursor\"}`"))
        .schema("DeadLetterPage", object("`{\"dead_letters\": [DeadLetterSummaryView], \"next_cursor\"}`"))
        .schema("ReplayFilter", object("`{\"integration_id\", \"since_ms\", \"until_ms\", \"dry_run\"}`, all optional"))
        .schema("ReplayReport", object("`{\"matched\", \"replayed\", \"failed\": [[id, why]], \"truncated\"}`"))
        .security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)))
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("VRSky REST API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Every operation needs `Authorization: Bearer <admin token or tenant API key>`; \
                     the same operations are the gRPC gateway's RPCs (package vrsky.v1).",
                )),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}

/// `GET /api/openapi.json`.
pub(crate) async fn serve() -> impl IntoResponse {
    Json(document())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every REST operation is in the document with its own description, and the
    /// document has nothing else; every schema it names is defined.
    #[test]
    fn the_document_lists_every_route_and_only_them() {
        let v = serde_json::to_value(document()).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        let routes = crate::http::api_routes();
        let mut listed = 0;
        for (path, item) in v["paths"].as_object().unwrap() {
            for (m, op) in item.as_object().unwrap() {
                listed += 1;
                let route = path.strip_prefix("/api").unwrap();
                let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
                assert!(
                    routes.iter().any(|(rm, rp, _)| *rm == method && *rp == route),
                    "{m} {path} is documented but not routed"
                );
                assert!(
                    !op["summary"].as_str().unwrap().is_empty(),
                    "{m} {path} has no description in openapi.rs"
                );
            }
        }
        assert_eq!(listed, routes.len(), "a route is missing from the document");
        let schemas = v["components"]["schemas"].as_object().unwrap();
        let text = v.to_string();
        for r in text.split("\"#/components/schemas/").skip(1) {
            let name = r.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "{name} is referenced but not defined");
        }
        assert!(schemas["MessageView"]["properties"].get("retry_count").is_some());
    }
}
