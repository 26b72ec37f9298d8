//! `aerodb verify --strict` tells a crash the next open repairs (a torn final write, derived files behind the log)
//! from damage (issue 17: it exited 1 on 32 of 32 crashed-but-undamaged directories), and changes nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use common::*;
use sha2::{Digest, Sha256};

/// Every file under `dir` with its SHA-256.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, [u8; 32]> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), Sha256::digest(std::fs::read(&p).unwrap()).into());
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let t = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).unwrap();
        }
    }
}

fn verify_cli(dir: &Path, key: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["verify", "--strict", "--verifier-key", key])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn verify_strict_passes_crashed_directories_and_still_finds_damage() {
    let tmp = TempDir::new("verify-crashed");
    let rounds = 6;
    let (mut passed, mut repairable_lines) = (0, 0);
    let mut key = String::new();
    for round in 0..rounds {
        let mut srv = start(tmp.path(), &["--checkpoint-interval-ms", "100"]);
        key.clone_from(&srv.verifier_key);
        let h = srv.http;
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for w in 0..6 {
                let stop = &stop;
                s.spawn(move || {
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let body = format!(r#"{{"tenant":"t","event":"r{round}w{w}i{i}"}}"#);
                        let _ = aerodb_server::httpc::send(
                            h,
                            &aerodb_server::httpc::request(
                                "POST",
                                "/v1/records",
                                Some(WRITER),
                                Some(&body),
                                false,
                            ),
                        );
                        i += 1;
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(300 + 97 * round));
            srv.kill9();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        // The crashed directory, as kill -9 left it, copied so the next round reopens the original.
        let copy = tmp.path().join(format!("crashed-{round}"));
        copy_dir(&srv.data, &copy);
        let before = snapshot(&copy);
        let (ok, out) = verify_cli(&copy, &key);
        assert!(
            ok,
            "round {round}: a crashed, undamaged directory failed verify --strict:\n{out}"
        );
        assert_eq!(snapshot(&copy), before, "verify changed the directory");
        repairable_lines += out.lines().filter(|l| l.starts_with("REPAIRABLE")).count();
        passed += 1;
    }
    // Damage is still damage: one byte of a sealed frame changed in the last crashed copy.
    let copy = tmp.path().join(format!("crashed-{}", rounds - 1));
    let wal = copy.join("wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let target = &segs[0];
    let mut b = std::fs::read(target).unwrap();
    b[200] ^= 0x10;
    std::fs::write(target, &b).unwrap();
    let (ok, out) = verify_cli(&copy, &key);
    assert!(!ok && out.contains("DAMAGE"), "{out}");
    report_figure(
        "verify --strict on kill -9 directories",
        &format!(
            "{passed}/{rounds} crashed directories pass (exit 0) with {repairable_lines} repairable findings \
             listed, none changed by verify; a flipped byte in a frame: exit 1, DAMAGE"
        ),
    );
}
