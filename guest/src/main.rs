//! vfioctl guest agent. Filled in by the agent issue.
fn main() {
    eprintln!("vfioctl-agent: not built yet");
    std::process::exit(1);
}
