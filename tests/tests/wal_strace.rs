//! The real file-system path, watched with `strace` (installed by `.ci/run`):
//! - the order of syscalls: a segment's header is written and `fdatasync`ed, the file renamed into place and the
//!   directory `fsync`ed before any frame is written to it; every acknowledgement follows the `fdatasync` that
//!   covers its frame;
//! - T6 against a real process: `fdatasync` made to return EIO by `strace -e inject`: nothing acknowledged after
//!   the failure, the process reports it, and the log reopens with every acknowledged record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

use std::{collections::HashMap, process::Command, sync::Arc};

use aerodb_tests::{report_figure, TempDir};
use aerodb_wal::{fs::RealFs, CommitId, Options, Wal};

const PROBE: &str = env!("CARGO_BIN_EXE_wal_probe");

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_probe(dir: &std::path::Path, count: u64, extra: &[&str], log: &std::path::Path) -> (String, i32) {
    let out = Command::new("strace")
        .args(["-f", "-qq", "-s", "256", "-o"])
        .arg(log)
        .args([
            "-e",
            "trace=openat,pwrite64,fdatasync,fsync,rename,ftruncate,write",
        ])
        .args(extra)
        .arg(PROBE)
        .arg(dir)
        .arg(count.to_string())
        .output()
        .expect("run strace");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// One parsed syscall: name, fd (if the first argument is one), the quoted path(s), the offset and the result.
#[derive(Debug)]
struct Call {
    name: String,
    args: String,
    ret: String,
}

fn parse(log: &str) -> Vec<Call> {
    log.lines()
        .filter_map(|l| {
            // "<pid>   name(args)   = ret"
            let l = l.split_once(' ').map_or(l, |(_, rest)| rest).trim_start();
            let (name, rest) = l.split_once('(')?;
            let (call, ret) = rest.rsplit_once(" = ")?;
            let args = call.trim_end().strip_suffix(')')?;
            Some(Call {
                name: name.to_owned(),
                args: args.to_owned(),
                ret: ret.trim().to_owned(),
            })
        })
        .collect()
}

fn quoted(s: &str, n: usize) -> Option<String> {
    s.split('"').nth(2 * n + 1).map(str::to_owned)
}

#[test]
fn real_syscall_order_of_segment_start_and_acks() {
    if !strace_available() {
        panic!("strace is required for this test (.ci/run installs it: apt-get install strace)");
    }
    let tmp = TempDir::new("strace-order");
    let dir = tmp.path().join("wal");
    let log = tmp.path().join("strace.log");
    let (stdout, code) = run_probe(&dir, 400, &[], &log);
    assert_eq!(code, 0, "{stdout}");
    let calls = parse(&std::fs::read_to_string(&log).unwrap());
    let mut fd_path: HashMap<String, String> = HashMap::new();
    // Per segment path stem: the stage it reached.
    let mut stage: HashMap<String, &str> = HashMap::new();
    let mut dir_fds = Vec::new();
    let (mut unsynced_frames, mut not_live) = (false, false);
    let (mut acks, mut segments, mut frame_writes) = (0u64, 0u64, 0u64);
    for c in &calls {
        let fd = c.args.split(',').next().unwrap_or("").trim().to_owned();
        let stem_of = |p: &str| {
            p.rsplit('/')
                .next()
                .unwrap_or(p)
                .split('.')
                .next()
                .unwrap_or("")
                .to_owned()
        };
        match c.name.as_str() {
            "openat" => {
                let path = quoted(&c.args, 0).unwrap_or_default();
                // File descriptor numbers are reused after close: the latest open decides what an fd is.
                dir_fds.retain(|d| *d != c.ret);
                if path.ends_with("/wal") {
                    dir_fds.push(c.ret.clone());
                }
                fd_path.insert(c.ret.clone(), path);
            }
            "pwrite64" => {
                let Some(path) = fd_path.get(&fd) else { continue };
                let offset: u64 = c.args.rsplit(',').next().unwrap().trim().parse().unwrap();
                let len: u64 = c.ret.parse().unwrap_or(0);
                let id = stem_of(path);
                if path.ends_with(".prealloc") && offset == 0 && len == 64 {
                    stage.insert(id, "header");
                } else if path.ends_with(".prealloc") && offset == 64 && stage.get(&id) == Some(&"header") {
                    // A new segment's first frames go in with its header, before the rename: they may not be
                    // acknowledged until the rename is durable (`not_live`).
                    frame_writes += 1;
                    unsynced_frames = true;
                    not_live = true;
                } else if offset >= 64 && stage.get(&id).is_some_and(|s| *s != "header" && *s != "synced") {
                    assert_eq!(
                        stage[&id], "live",
                        "frame written to {path} before its directory entry was durable"
                    );
                    frame_writes += 1;
                    unsynced_frames = true;
                }
            }
            "fdatasync" | "fsync" => {
                if dir_fds.contains(&fd) {
                    for s in stage.values_mut().filter(|s| **s == "renamed") {
                        *s = "live";
                        segments += 1;
                        not_live = false;
                    }
                } else if let Some(path) = fd_path.get(&fd) {
                    let id = stem_of(path);
                    if stage.get(&id) == Some(&"header") {
                        stage.insert(id, "synced");
                    }
                    unsynced_frames = false;
                }
            }
            "rename" => {
                let to = quoted(&c.args, 1).unwrap();
                let id = stem_of(&to);
                assert_eq!(
                    stage.get(&id),
                    Some(&"synced"),
                    "{to} renamed before its header was fdatasynced"
                );
                stage.insert(id, "renamed");
            }
            "write" if fd == "1" && c.args.contains("ack ") => {
                assert!(
                    !not_live,
                    "an ack was printed before the directory entry of its segment was durable: {}",
                    c.args
                );
                assert!(
                    !unsynced_frames,
                    "an ack was printed before the fdatasync covering its frame: {}",
                    c.args
                );
                acks += 1;
            }
            _ => {}
        }
    }
    assert_eq!(acks, 400);
    assert!(
        segments >= 3 && frame_writes >= 400,
        "saw {segments} segments, {frame_writes} frame writes"
    );
    report_figure(
        "real-FS syscall order (strace)",
        &format!("{acks} acks, {segments} segment starts, 0 out of order"),
    );
}

#[test]
fn t6_real_process_fdatasync_eio_is_never_acknowledged() {
    if !strace_available() {
        panic!("strace is required for this test (.ci/run installs it: apt-get install strace)");
    }
    let mut cases = 0;
    for when in [5u64, 37, 120] {
        let tmp = TempDir::new("strace-eio");
        let dir = tmp.path().join("wal");
        let log = tmp.path().join("strace.log");
        let inject = format!("inject=fdatasync:error=EIO:when={when}");
        let (stdout, code) = run_probe(&dir, 300, &["-e", &inject], &log);
        assert_eq!(code, 3, "the probe must stop on EIO: {stdout}");
        let last_line = stdout.lines().last().unwrap();
        assert!(
            last_line.starts_with("error:") && last_line.contains("fdatasync"),
            "{last_line}"
        );
        assert!(last_line.contains("read-only"), "{last_line}");
        let acked: Vec<u64> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("ack "))
            .map(|n| n.parse().unwrap())
            .collect();
        // fdatasync number `when` failed; every earlier one belonged to segment creation or an acknowledged append.
        assert!(
            (acked.len() as u64) < when,
            "{} acks but fdatasync #{when} failed",
            acked.len()
        );
        let wal = Wal::open(
            Arc::new(RealFs),
            &dir,
            Options {
                max_record_bytes: 4096,
                ..Options::default()
            },
        )
        .unwrap();
        let present = wal.read_from(CommitId(1)).unwrap().count() as u64;
        assert!(
            present >= acked.len() as u64,
            "acknowledged records lost after EIO"
        );
        cases += 1;
    }
    report_figure(
        "T6 real-process EIO (strace inject)",
        &format!("{cases} cases, 0 acks after EIO"),
    );
}
