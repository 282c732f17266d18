//! What a run puts on the cluster: its rooms, and each member's room,
//! node and publishing pace.

use crate::cli::{RunOpts, Scenario};
use crate::member::MemberCfg;
use anyhow::{Context, Result, bail};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct Plan {
    pub(crate) rooms: Vec<String>,
    pub(crate) members: Vec<MemberCfg>,
    pub(crate) publishers_per_room: usize,
}

pub(crate) fn plan(o: &RunOpts, nodes: &[serde_json::Value]) -> Result<Plan> {
    let padding: Arc<str> = "x".repeat(o.payload).into();
    let every = Duration::from_secs_f64(1.0 / o.rate.max(0.001));
    let (rooms, members_per_room, publishers) = match o.scenario {
        Scenario::Chat | Scenario::Failover | Scenario::Abuse => {
            (o.rooms, o.members, o.publishers.unwrap_or(o.members))
        }
        Scenario::Broadcast => (1, o.members, o.publishers.unwrap_or(5)),
        Scenario::Idle => {
            let rooms = (o.connections / 10).max(1);
            (rooms, o.connections.div_ceil(rooms), 0)
        }
    };
    let fixed_url = if o.scenario == Scenario::Idle {
        let node = match &o.node {
            Some(id) => nodes
                .iter()
                .find(|n| n["id"] == id.as_str())
                .with_context(|| format!("no node {id}"))?,
            None => nodes.first().context("no live node")?,
        };
        Some(node["url"].as_str().context("node without url")?.to_owned())
    } else {
        None
    };
    let tag = o
        .tag
        .clone()
        .unwrap_or_else(|| std::process::id().to_string());
    let room_names: Vec<String> = (0..rooms).map(|i| format!("bench-{tag}-{i}")).collect();
    let total = match o.scenario {
        Scenario::Idle => o.connections,
        _ => rooms * members_per_room,
    };
    let source_ips = match o.source_ips {
        // Nodes and gateways count connections per address (1,000 at
        // once, 500 opened at once and 50/s after): spread clients so a run
        // measures load, and a failover's reconnects, not those limits.
        0 => total.div_ceil(100).clamp(1, 250) as u32,
        n => (n as u32).min(253),
    };
    // Each member leaves and comes back every `total / churn` seconds.
    if !o.churn.is_finite() || o.churn < 0.0 {
        bail!("--churn takes joins per second, 0 or more");
    }
    let churn_every = (o.churn > 0.0 && o.scenario != Scenario::Idle)
        .then(|| Duration::from_secs_f64(total as f64 / o.churn).max(Duration::from_millis(1)));
    let mut members = Vec::new();
    let mut sender = 0u32;
    for (ri, room) in room_names.iter().enumerate() {
        for m in 0..members_per_room {
            if members.len()
                >= if o.scenario == Scenario::Idle {
                    o.connections
                } else {
                    usize::MAX
                }
            {
                break;
            }
            // From 127.0.0.2 up: 127.0.0.1 is the abuse scenario's attackers'.
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (sender % source_ips) as u8));
            members.push(MemberCfg {
                room: room.clone(),
                room_idx: ri,
                sender,
                publish_every: (m < publishers).then_some(every),
                padding: padding.clone(),
                mode: o.mode,
                gateway: o.gateway.trim_end_matches('/').to_owned(),
                source_ip: ip,
                fixed_url: fixed_url
                    .as_ref()
                    .map(|u| format!("{u}?room={room}&user=b{sender}")),
                churn_every,
            });
            sender += 1;
        }
    }
    Ok(Plan {
        rooms: room_names,
        members,
        publishers_per_room: publishers.min(members_per_room),
    })
}
