//! Command-line parsing: few enough options that a parser crate would cost more than it saves.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Usage text.
pub const USAGE: &str = "usage:
  podpbx [run] [--config FILE] [--log-format text|json]   run the PBX (embedded default config without --config)
  podpbx check --config FILE                              validate a config file and exit
  podpbx ctl [--admin ADDR|--config FILE] [--token-file FILE] registrations|calls|trunks|subscriptions|features|reload|status|health|ready
  podpbx ctl [...] mode NAME on|off | dnd USER on|off | forward USER always|busy|no-answer TARGET|off
  podpbx ctl --config FILE greeting USER FILE.wav|--remove
                                                          ask the running PBX (admin listener)
  podpbx --version | --help";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What to do.
#[derive(Debug)]
pub enum Command {
    Run {
        config: Option<PathBuf>,
        log_format: Option<LogFormat>,
    },
    Check {
        config: PathBuf,
    },
    /// `podpbx ctl ...`: the arguments after `ctl`, parsed by `ctl::parse`.
    Ctl {
        args: Vec<String>,
    },
    Help,
    Version,
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter().peekable();
    let sub = match it.peek().map(|s| s.as_str()) {
        Some("run") | Some("check") => it.next().map(|s| s.as_str()),
        Some("--help") | Some("-h") | Some("help") => return Ok(Command::Help),
        Some("--version") | Some("-V") => return Ok(Command::Version),
        Some("ctl") => {
            return Ok(Command::Ctl {
                args: args[1..].to_vec(),
            })
        }
        _ => Some("run"),
    };
    let mut config = None;
    let mut log_format = None;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                config = Some(PathBuf::from(it.next().ok_or("--config needs a file")?))
            }
            "--log-format" => {
                log_format = Some(match it.next().map(|s| s.as_str()) {
                    Some("text") => LogFormat::Text,
                    Some("json") => LogFormat::Json,
                    _ => return Err("--log-format must be text or json".into()),
                })
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    match sub {
        Some("check") => Ok(Command::Check {
            config: config.ok_or("check needs --config FILE")?,
        }),
        _ => Ok(Command::Run { config, log_format }),
    }
}

/// `podpbx check`: prints every problem as `file:line:col: key: message`, exit 1 if any.
pub fn check(path: &Path) -> ExitCode {
    match podpbx_config::check(path) {
        Ok(cfg) => {
            // Valid, but a forgeable source reaches a trunk: say so (toll fraud risk).
            for w in cfg.trunk_exposure_warnings() {
                eprintln!("{}: warning: {w}", path.display());
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}
