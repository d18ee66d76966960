//! `sluice-ipam`: the sluice allocator as a CNI IPAM plugin, for any plugin
//! that delegates IPAM through CNI_PATH. Run with arguments it is an operator
//! tool instead (`sluice-ipam leases`); a runtime never passes arguments.

use clap::{Parser, Subcommand, ValueEnum};
use sluice_ipam::config::DEFAULT_DATA_DIR;
use sluice_ipam::listing;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sluice-ipam",
    about = "sluice IPAM: CNI plugin (no arguments) and lease inspection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuild a pool's lease store that DEL put aside as corrupt, from
    /// the sluice plugin's endpoint records of the network.
    Rebuild {
        /// The IPAM data directory (the config's ipam.dataDir).
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The pool: the CNI network name.
        #[arg(long)]
        network: String,
        /// The plugin's data directory (its `dataDir`), holding endpoints/<network>/.
        #[arg(long, default_value = "/var/lib/sluice")]
        endpoints: PathBuf,
    },
    /// List leases per pool with owner and age.
    Leases {
        /// The IPAM data directory (the config's ipam.dataDir).
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Only this pool (the CNI network name).
        #[arg(long)]
        network: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() {
    if std::env::args_os().len() <= 1 {
        std::process::exit(sluice_cni_spec::skel::run(&sluice_ipam::cni::IpamPlugin));
    }
    let (data_dir, network, output) = match Cli::parse().command {
        Command::Leases {
            data_dir,
            network,
            output,
        } => (data_dir, network, output),
        Command::Rebuild {
            data_dir,
            network,
            endpoints,
        } => match sluice_ipam::rebuild::rebuild(&data_dir, &network, &endpoints) {
            Ok(r) => {
                println!("{network}: {} leases rebuilt from the endpoint records", r.leases);
                for p in r.skipped {
                    println!("  skipped (unreadable): {}", p.display());
                }
                if let Some(k) = r.kept_as {
                    println!("  the corrupt store is kept as {}", k.display());
                }
                return;
            }
            Err(e) => {
                eprintln!("sluice-ipam: {e}");
                std::process::exit(1);
            }
        },
    };
    match listing::list(&data_dir, network.as_deref()) {
        Ok(rows) => match output {
            Output::Table => print!("{}", listing::table(&rows)),
            Output::Json => println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialize")),
        },
        Err(e) => {
            eprintln!("sluice-ipam: {e}");
            std::process::exit(1);
        }
    }
}
