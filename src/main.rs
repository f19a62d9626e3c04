//! `exec-allinone` entry point: parse flags and hand over to the library.
//! All behaviour lives in the library; see ARCHITECTURE.md for the map.

fn main() -> std::process::ExitCode {
    let cli = exec_allinone::cli::parse();
    exec_allinone::main(cli)
}
