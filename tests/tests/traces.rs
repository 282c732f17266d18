//! Traces over OTLP/HTTP (`otlp_endpoint`): real gateway and ws-node
//! processes (relay) send their spans to a real OTLP/HTTP receiver here,
//! which decodes them with the OpenTelemetry protobuf definitions. One
//! trace per publish: gateway → node → (owner) → Redis, with the trace
//! context carried over internal gRPC; a gateway sampling 0 of the traces
//! it starts sends none, and the nodes it calls then send none for them
//! either. Every process is stopped with SIGTERM first, which sends what
//! its exporter still holds: the counts are final, with no waiting.

use anyhow::Result;
use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message as _;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use turnout_proto::Strategy;
use turnout_tests::*;

/// A span as received, with its process.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    instance: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    attributes: HashMap<String, String>,
}

fn attributes(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) keeping every span.
async fn receiver() -> Result<(String, Arc<Mutex<Vec<Span>>>, CancellationToken)> {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                    return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                };
                let mut kept = kept.lock().unwrap();
                for rs in req.resource_spans {
                    let resource =
                        attributes(&rs.resource.map(|r| r.attributes).unwrap_or_default());
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            kept.push(Span {
                                service: resource.get("service.name").cloned().unwrap_or_default(),
                                instance: resource
                                    .get("service.instance.id")
                                    .cloned()
                                    .unwrap_or_default(),
                                trace: s.trace_id,
                                id: s.span_id,
                                parent: s.parent_span_id,
                                name: s.name,
                                attributes: attributes(&s.attributes),
                            });
                        }
                    }
                }
                // An empty ExportTraceServiceResponse.
                (axum::http::StatusCode::OK, Vec::new())
            }
        }),
    );
    let (url, stop) = serve_app(app).await?;
    Ok((url, spans, stop))
}

/// The span's ancestors in its trace (nearest first), as far as they were
/// received.
fn ancestors<'a>(span: &Span, all: &'a [Span]) -> Vec<&'a Span> {
    let mut out = Vec::new();
    let mut parent = span.parent.clone();
    while !parent.is_empty() {
        let Some(p) = all.iter().find(|s| s.trace == span.trace && s.id == parent) else {
            break;
        };
        out.push(p);
        parent = p.parent.clone();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_is_one_trace_across_gateway_node_owner_and_redis() -> Result<()> {
    let (otlp, spans, stop_receiver) = receiver().await?;
    let redis = Redis::start().await?;
    let url = redis.url();
    let router = start_router(&url, Strategy::Relay).await;
    let env = [
        ("TURNOUT_STRATEGY", "relay"),
        ("TURNOUT_REDIS_URL", url.as_str()),
        ("TURNOUT_OTLP_ENDPOINT", otlp.as_str()),
    ];
    let mut n1 = NodeProcess::start("n1", &env).await?;
    let mut n2 = NodeProcess::start("n2", &env).await?;
    let router_url = router.http();
    let gateway = |id: &'static str, ratio: &'static str| {
        let router_url = router_url.clone();
        async move {
            let mut env = env.to_vec();
            env.push(("TURNOUT_OTLP_SAMPLE_RATIO", ratio));
            NodeProcess::start_other("turnout-gateway", id, &["--router-url", &router_url], &env)
                .await
        }
    };
    // g1 keeps every trace it starts, g2 none.
    let mut g1 = gateway("g1", "1").await?;
    let mut g2 = gateway("g2", "0").await?;
    for g in [&g1, &g2] {
        wait_for("2 nodes at the gateway", DEADLINE, || async {
            let (_, v) = http_get_json(&format!("{}/api/cluster", g.http()))
                .await
                .ok()?;
            (v["nodes"].as_array()?.len() == 2).then_some(())
        })
        .await?;
    }

    // Server API publishes through each gateway.
    for (g, n) in [(&g1, 3), (&g2, 3)] {
        for i in 0..n {
            let body = json!({"data": {"i": i}}).to_string();
            let api = format!("{}/api/rooms/traced/publish", g.http());
            let (status, reply) = http("POST", &api, Some(body), &[]).await?;
            anyhow::ensure!(
                status == 200,
                "publish: {status} {}",
                String::from_utf8_lossy(&reply)
            );
        }
    }
    // Client publishes on both nodes, in a room one of them owns: the
    // other's go to the owner.
    let mut a = Client::connect(&n1.ws_url()).await?;
    let mut b = Client::connect(&n2.ws_url()).await?;
    a.join("relayed").await?;
    b.join("relayed").await?;
    for i in 0..2 {
        a.publish("relayed", json!({"a": i}), &format!("a{i}"))
            .await?;
        b.publish("relayed", json!({"b": i}), &format!("b{i}"))
            .await?;
    }
    drop((a, b));

    // SIGTERM sends what each exporter still holds, then exits 0.
    for p in [&mut g1, &mut g2, &mut n1, &mut n2] {
        p.terminate().await?;
    }
    stop_receiver.cancel();
    let all = spans.lock().unwrap().clone();
    let named = |name: &str| all.iter().filter(|s| s.name == name).collect::<Vec<_>>();

    // The server API: g1's three publishes, each one trace from the gateway
    // through the node to Redis; g2 sampled none, and its calls' spans on
    // the nodes were not kept either (their parent was not sampled).
    let gateway_spans = named("gateway.publish");
    assert_eq!(gateway_spans.len(), 3, "{gateway_spans:#?}");
    assert!(
        gateway_spans
            .iter()
            .all(|s| s.service == "turnout-gateway" && s.instance == "g1")
    );
    let delivers = named("node.deliver");
    assert_eq!(delivers.len(), 3, "one per g1 publish: {delivers:#?}");
    for d in &delivers {
        assert_eq!(d.service, "turnout-ws-node");
        let up = ancestors(d, &all);
        assert!(
            up.first().is_some_and(|p| p.name == "gateway.publish"),
            "node.deliver's parent is the gateway's span: {up:#?}"
        );
        let stored = all.iter().filter(|s| {
            s.trace == d.trace && s.name == "redis publish.lua" && s.service == "turnout-ws-node"
        });
        assert_eq!(stored.count(), 1, "one Redis call in the trace");
    }

    // The clients' publishes: each one trace rooted at the node it reached;
    // a non-owner's crosses to the owner (relay.publish, another process),
    // which makes the Redis call.
    let roots: Vec<&Span> = named("node.publish")
        .into_iter()
        .filter(|s| s.attributes.get("room").is_some_and(|r| r == "relayed"))
        .filter(|s| s.parent.is_empty())
        .collect();
    assert_eq!(roots.len(), 4, "{roots:#?}");
    let mut crossed = 0;
    for root in &roots {
        let trace: Vec<&Span> = all.iter().filter(|s| s.trace == root.trace).collect();
        let redis: Vec<&&Span> = trace
            .iter()
            .filter(|s| s.name == "redis publish.lua")
            .collect();
        assert_eq!(redis.len(), 1, "{trace:#?}");
        if let Some(relay) = trace.iter().find(|s| s.name == "relay.publish") {
            crossed += 1;
            assert_ne!(relay.instance, root.instance, "the owner is another node");
            assert!(
                ancestors(relay, &all).iter().any(|s| s.id == root.id),
                "relay.publish continues the client's trace"
            );
            assert_eq!(redis[0].instance, relay.instance, "the owner stores");
            assert!(ancestors(redis[0], &all).iter().any(|s| s.id == relay.id));
        } else {
            assert_eq!(redis[0].instance, root.instance, "the owner stores its own");
        }
    }
    assert_eq!(
        crossed, 2,
        "the non-owner's two publishes went to the owner"
    );
    Ok(())
}
