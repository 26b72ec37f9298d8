//! `wal_probe DIR COUNT`: appends COUNT records to a WAL in DIR (real files, 64 KiB segments, no background
//! thread) one at a time, printing `ack <CommitId>` after each acknowledgement. On an error it prints
//! `error: <message>` and exits with status 3. Used by the strace-based tests, which watch the real syscalls.

use std::{io::Write, sync::Arc};

use aerodb_wal::{fs::RealFs, Epoch, Options, Wal};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(Ok(count))) = (args.get(1), args.get(2).map(|c| c.parse::<u64>())) else {
        eprintln!("usage: wal_probe DIR COUNT");
        std::process::exit(2);
    };
    let opts = Options {
        segment_bytes: 64 << 10,
        max_record_bytes: 4096,
        background_preallocation: false,
        ..Options::default()
    };
    let wal = match Wal::open(Arc::new(RealFs), dir, opts) {
        Ok(w) => w,
        Err(e) => {
            println!("error: {e}");
            std::process::exit(3);
        }
    };
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        let body = format!("probe record {i} {}", "x".repeat((i % 50) as usize * 20));
        match wal.append(Epoch(1), body.as_bytes()) {
            Ok(id) => {
                let _ = writeln!(out, "ack {id}");
                let _ = out.flush();
            }
            Err(e) => {
                let _ = writeln!(out, "error: {e}");
                let _ = out.flush();
                std::process::exit(3);
            }
        }
    }
}
