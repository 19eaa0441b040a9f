//! `strata`: the command-line front end.
//!
//! - `strata demo` — build the canonical four-layer port, push thousands of
//!   generated connections through it, print counters, and fail if any
//!   invariant breaks.
//! - `strata replay` — run a pcap/pcapng through a port from a policy file
//!   or a snapshot; write forwarded frames, a verdict log and a summary.
//! - `strata trace` — explain one frame's path through the layers.
//! - `strata snapshot` — build a port from a policy file and save it.
//! - `strata check` — validate a policy file (and optionally re-export it).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use strata::demo::{self, DemoOptions};
use strata::policy_file;
use strata::replay::{self, PortSource, ReplayOptions};
use strata::trace_cmd::{self, TraceInput};
use strata_engine::Direction;

#[derive(Parser)]
#[command(name = "strata", version, about = "Strata virtual switch tools")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirArg {
    Out,
    In,
}

impl From<DirArg> for Direction {
    fn from(d: DirArg) -> Direction {
        match d {
            DirArg::Out => Direction::Out,
            DirArg::In => Direction::In,
        }
    }
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Source {
    /// Build the port from a policy file (.toml or .json).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Restore the port from a snapshot (.ssr).
    #[arg(long)]
    snapshot: Option<PathBuf>,
}

impl Source {
    fn get(&self) -> PortSource {
        match (&self.policy, &self.snapshot) {
            (Some(p), _) => PortSource::Policy(p.clone()),
            (None, Some(s)) => PortSource::Snapshot(s.clone()),
            // clap's group makes one of them required.
            (None, None) => PortSource::Policy(PathBuf::new()),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate traffic through the canonical four-layer port and check it.
    Demo {
        /// Number of generated connections.
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// Random seed (same seed, same traffic).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the traffic (demo.pcapng) and the policy
        /// (policy.toml) to this directory, for `strata replay`.
        #[arg(long, value_name = "DIR")]
        write_pcap: Option<PathBuf>,
    },
    /// Run a capture through a port.
    Replay {
        #[command(flatten)]
        source: Source,
        /// Input capture (pcap or pcapng).
        #[arg(long = "in", value_name = "IN.pcap")]
        input: PathBuf,
        /// Forwarded frames (pcapng if it ends in .pcapng).
        #[arg(long = "out", value_name = "OUT.pcap")]
        output: Option<PathBuf>,
        /// Direction of every frame (default: the pcapng interface's, else out).
        #[arg(long, value_enum)]
        direction: Option<DirArg>,
        /// Per-packet verdict log (JSON lines).
        #[arg(long, value_name = "verdicts.jsonl")]
        log: Option<PathBuf>,
        /// Save the port state after the replay.
        #[arg(long, value_name = "FILE.ssr")]
        save_snapshot: Option<PathBuf>,
        /// Do not expire flows during the replay.
        #[arg(long)]
        no_expire: bool,
    },
    /// Show how the port would handle one frame.
    Trace {
        #[command(flatten)]
        source: Source,
        /// Direction of the frame (default: the capture's, else out).
        #[arg(long, value_enum)]
        direction: Option<DirArg>,
        /// The frame as hex.
        #[arg(long, conflicts_with = "pcap", required_unless_present = "pcap")]
        frame_hex: Option<String>,
        /// Time for --frame-hex, nanoseconds.
        #[arg(long, default_value_t = 0)]
        time_ns: u64,
        /// A capture holding the frame.
        #[arg(long, requires = "index")]
        pcap: Option<PathBuf>,
        /// Index (from 0) of the frame in --pcap.
        #[arg(long)]
        index: Option<usize>,
        /// Process the capture's earlier frames first.
        #[arg(long)]
        warm: bool,
        /// Print the trace as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a port from a policy file and save it as a snapshot.
    Snapshot {
        #[arg(long)]
        policy: PathBuf,
        #[arg(long, value_name = "FILE.ssr")]
        out: PathBuf,
    },
    /// Validate a policy file; optionally write it back out normalized.
    Check {
        #[arg(long)]
        policy: PathBuf,
        /// Write the normalized policy (.toml or .json).
        #[arg(long)]
        export: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        // A closed pipe (`strata ... | head`) is not an error.
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let io =
        e.downcast_ref::<std::io::Error>()
            .or_else(|| match e.downcast_ref::<demo::DemoError>() {
                Some(demo::DemoError::Io(io)) => Some(io),
                _ => None,
            });
    io.is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cmd: Cmd) -> Result<ExitCode, AnyError> {
    let mut stdout = std::io::stdout().lock();
    match cmd {
        Cmd::Demo {
            connections,
            seed,
            write_pcap,
        } => {
            let opts = DemoOptions {
                connections,
                seed,
                write_pcap,
            };
            let report = demo::run(&opts, &mut stdout)?;
            if report.failures.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("demo: {} invariant(s) failed:", report.failures.len());
                for f in report.failures.iter().take(20) {
                    eprintln!("  - {f}");
                }
                Ok(ExitCode::from(2))
            }
        }
        Cmd::Replay {
            source,
            input,
            output,
            direction,
            log,
            save_snapshot,
            no_expire,
        } => {
            let mut port = source.get().open()?;
            let opts = ReplayOptions {
                input,
                output,
                direction: direction.map(Direction::from),
                log,
                expire_interval_ns: (!no_expire).then_some(replay::DEFAULT_EXPIRE_INTERVAL_NS),
            };
            let summary = replay::replay(&mut port, &opts)?;
            writeln!(stdout, "{summary}")?;
            if let Some(p) = save_snapshot {
                replay::save_snapshot(&port, &p)?;
                writeln!(stdout, "port state saved to {}", p.display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Trace {
            source,
            direction,
            frame_hex,
            time_ns,
            pcap,
            index,
            warm,
            json,
        } => {
            let mut port = source.get().open()?;
            let input = match (frame_hex, pcap) {
                (Some(hex), _) => TraceInput::Hex {
                    hex,
                    now_ns: time_ns,
                },
                (None, Some(path)) => TraceInput::Capture {
                    path,
                    index: index.unwrap_or(0),
                    warm,
                },
                (None, None) => return Err("give --frame-hex or --pcap with --index".into()),
            };
            let t = trace_cmd::run(&mut port, direction.map(Direction::from), &input)?;
            if json {
                writeln!(stdout, "{}", serde_json::to_string_pretty(&t)?)?;
            } else {
                write!(stdout, "{t}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Snapshot { policy, out } => {
            let port = policy_file::load_port(&policy)?;
            replay::save_snapshot(&port, &out)?;
            writeln!(
                stdout,
                "port {:?}: {} layers saved to {}",
                port.name(),
                port.layer_ids().len(),
                out.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { policy, export } => {
            let spec = policy_file::load(&policy)?;
            // Building the port runs the engine's own validation too.
            let port = spec.build_port(strata_engine::ActionRegistry::default())?;
            writeln!(stdout, "{}: ok — port {:?}", policy.display(), spec.name)?;
            for t in &spec.mappings {
                writeln!(
                    stdout,
                    "  mapping table {:?}: {} entries",
                    t.name,
                    t.entries.len()
                )?;
            }
            for p in &spec.port_pools {
                writeln!(stdout, "  port pool {:?}: {} {:?}", p.name, p.ip, p.ranges)?;
            }
            for b in &spec.backend_pools {
                writeln!(
                    stdout,
                    "  backend pool {:?}: {} backends",
                    b.name,
                    b.backends.len()
                )?;
            }
            for l in port.layer_specs() {
                let rules: usize = l.groups.iter().map(|g| g.rules.len()).sum();
                writeln!(
                    stdout,
                    "  layer {:?}: {} groups, {} rules (default out {:?}, in {:?})",
                    l.id,
                    l.groups.len(),
                    rules,
                    l.default_out,
                    l.default_in
                )?;
            }
            if let Some(p) = export {
                let text = match policy_file::Format::from_path(&p) {
                    Some(policy_file::Format::Json) => spec.to_json()?,
                    _ => spec.to_toml()?,
                };
                std::fs::write(&p, text)?;
                writeln!(stdout, "written to {}", p.display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
