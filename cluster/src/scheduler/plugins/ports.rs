//! NodePorts: a host port (protocol, address, port) is taken by at most one pod per node.

use super::{CycleState, NodeInfo, Unfit};

/// Fails if a port the pod claims collides with one already claimed on the node.
pub fn filter(state: &CycleState, node: &NodeInfo) -> Result<(), Unfit> {
    let clash = state
        .pod
        .host_ports
        .iter()
        .any(|want| node.used_ports.keys().any(|used| used.conflicts(want)));
    if clash {
        return Err(Unfit::resolvable(
            "node(s) didn't have free ports for the requested pod ports",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cache, info, node, pod};
    use super::*;
    use serde_json::json;

    fn with_port(name: &str, port: serde_json::Value) -> crate::scheduler::pod_info::PodRef {
        pod(name, json!({}), json!({"containers": [{"name": "c", "ports": [port]}]}))
    }

    #[test]
    fn host_ports_collide_by_protocol_address_and_port() {
        let cases = [
            (
                "same port",
                json!({"containerPort": 80, "hostPort": 8080}),
                json!({"containerPort": 80, "hostPort": 8080}),
                false,
            ),
            (
                "other port",
                json!({"containerPort": 80, "hostPort": 8080}),
                json!({"containerPort": 80, "hostPort": 8081}),
                true,
            ),
            (
                "udp beside tcp",
                json!({"containerPort": 53, "hostPort": 53}),
                json!({"containerPort": 53, "hostPort": 53, "protocol": "UDP"}),
                true,
            ),
            (
                "two addresses",
                json!({"containerPort": 80, "hostPort": 80, "hostIP": "127.0.0.1"}),
                json!({"containerPort": 80, "hostPort": 80, "hostIP": "127.0.0.2"}),
                true,
            ),
            (
                "all addresses against one",
                json!({"containerPort": 80, "hostPort": 80}),
                json!({"containerPort": 80, "hostPort": 80, "hostIP": "127.0.0.2"}),
                false,
            ),
            (
                "container ports alone claim nothing",
                json!({"containerPort": 80}),
                json!({"containerPort": 80}),
                true,
            ),
        ];
        for (name, placed, incoming, fits) in cases {
            let c = cache(
                &[node("n", "1", json!({}), json!({}))],
                &[(with_port("a", placed), "n")],
            );
            let state = CycleState::new(with_port("p", incoming), &c);
            assert_eq!(filter(&state, info(&c, "n")).is_ok(), fits, "{name}");
        }
    }
}
