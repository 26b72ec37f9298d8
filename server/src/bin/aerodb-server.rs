//! `aerodb-server`: runs a node. `aerodb-server --help` lists the settings.

use std::process::ExitCode;

// mimalloc: the server allocates small buffers on every request from many threads; `net-ratios` shows lower CPU per
// REST append with it than with glibc malloc (compare with commit 3f91eec).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    aerodb_server::main_server::run(std::env::args_os())
}
