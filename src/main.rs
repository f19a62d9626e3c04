//! `exec-allinone` entry point: parse flags and hand over to the library.
//! All behaviour lives in the library; see ARCHITECTURE.md for the map.
//!
//! No `#[global_allocator]`: the system's (glibc's malloc) is the one measured best. At a
//! thousand slow uploads the webdav role peaks at about 62 MiB with it, 120-125 with mimalloc;
//! exrp stays flat with it since its store scan no longer builds a tree of the whole listing,
//! the burst glibc used to strand (bench/README.md, "Memory and the allocator").

fn main() -> std::process::ExitCode {
    let cli = exec_allinone::cli::parse();
    exec_allinone::main(cli)
}
