//! `exec-allinone` entry point: parse flags and hand over to the library.
//! All behaviour lives in the library; see ARCHITECTURE.md for the map.

/// glibc's malloc keeps freed memory of a long-running exrp in fragmented arenas: measured
/// +33 KiB of RSS per injected recording, without end (bench/README.md, exrp). mimalloc
/// returns it: the same runs stay flat.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = exec_allinone::cli::parse();
    exec_allinone::main(cli)
}
