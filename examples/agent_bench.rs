//! Round-trip and load measurements for scripts/bench-agent (not a test: it prints
//! numbers, it asserts nothing about them).
//!
//!   agent_bench rtt ADDR [ECHO_PORT] [N]   hello round trips, and bare echo round trips
//!                                           on ECHO_PORT over the same transport kind
//!   agent_bench load ADDR N                 N x (hello, list_devices, kernel_log)
//!   agent_bench shutdown ADDR               power the guest off (or stop the agent)
//!
//! The agent's secret comes from the file named by `VFIOCTL_AGENT_TOKEN` (a VM's
//! `RUN_DIR/agent.token`).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use vfioctl::agent::{AgentClient, Transport};
use vfioctl_common::proto::PowerAction;

fn stats(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    serde_json::json!({"n": v.len(), "median_ms": p(0.5), "p90_ms": p(0.9), "min_ms": v[0], "max_ms": v[v.len()-1]})
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: Transport = args.get(1).expect("ADDR").parse().expect("agent address");
    let token_file = std::env::var_os("VFIOCTL_AGENT_TOKEN").expect("VFIOCTL_AGENT_TOKEN=FILE");
    let token = vfioctl::vm::rundir::read_token_file(std::path::Path::new(&token_file))
        .expect("the agent's secret");
    let mut c =
        AgentClient::connect(&addr, &token, Duration::from_secs(300)).expect("agent answers");
    match args[0].as_str() {
        "rtt" => {
            let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200);
            let mut hello = Vec::new();
            for _ in 0..n {
                let t = Instant::now();
                c.hello().unwrap();
                hello.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let mut out = serde_json::json!({"transport": addr.to_string(), "agent_hello": stats(hello), "agent_rss_kib": c.hello().unwrap().rss_kib});
            if let Some(port) = args.get(2).and_then(|s| s.parse::<u32>().ok()) {
                let echo_addr = match &addr {
                    Transport::Vsock { cid, .. } => Transport::Vsock { cid: *cid, port },
                    Transport::Hybrid { uds_path, .. } => Transport::Hybrid {
                        uds_path: uds_path.clone(),
                        port,
                    },
                    Transport::Unix { .. } => panic!("echo needs vsock"),
                };
                let mut s = echo_addr.open(Duration::from_secs(10)).expect("echo port");
                s.set_timeout(Some(Duration::from_secs(10))).unwrap();
                let msg = [0x5au8; 64];
                let mut buf = [0u8; 64];
                let mut echo = Vec::new();
                for _ in 0..n {
                    let t = Instant::now();
                    s.write_all(&msg).unwrap();
                    s.read_exact(&mut buf).unwrap();
                    echo.push(t.elapsed().as_secs_f64() * 1e3);
                }
                out["bare_echo_64b"] = stats(echo);
            }
            println!("{out}");
        }
        "load" => {
            let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);
            for _ in 0..n {
                c.hello().unwrap();
                c.list_devices().unwrap();
                let _ = c.kernel_log(None, None);
            }
            println!("{{\"requests\": {}}}", n * 3);
        }
        "shutdown" => c.shutdown(PowerAction::Poweroff).unwrap(),
        other => panic!("unknown mode {other}"),
    }
}
