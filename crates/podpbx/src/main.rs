//! podpbx: a native Rust PBX (B2BUA) for one Kubernetes pod with pinned IPv6 and IPv4 addresses.

mod admin;
mod calls;
mod cdr;
mod cli;
mod core;
mod ctl;
mod dns;
mod email;
mod ifaddrs;
mod lifecycle;
mod logging;
mod media;
mod metrics;
mod overload;
mod owners;
mod presence;
mod reload;
mod server;
#[cfg(test)]
mod sim;
mod state_writer;
mod stats;
mod tls;
mod transport;
mod trunks;
mod udp;
mod voicemail;
mod webhooks;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match cli::parse(&args) {
        Ok(cmd) => cmd,
        Err(msg) => {
            eprintln!("podpbx: {msg}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match cmd {
        cli::Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        cli::Command::Version => {
            println!("podpbx {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        cli::Command::Check { config } => cli::check(&config),
        cli::Command::Ctl { args } => ctl::main(&args),
        cli::Command::Run { config, log_format } => server::run(config.as_deref(), log_format),
    }
}
