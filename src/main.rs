//! The vfioctl command. All logic lives in the library; see `vfioctl::cli`.
fn main() -> std::process::ExitCode {
    vfioctl::cli::main()
}
