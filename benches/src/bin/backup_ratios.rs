//! `backup-ratios`: backup and restore of a log against the baseline `cp -r` + `sha256sum` of the same data directory
//! (issue 20's benchmark), in one run, interleaved round by round. The log is written first through the engine
//! (256-byte events in batches of 1,024, a checkpoint every 100,000 records, one at the end). Each round times:
//! the baseline (`cp -r DATA COPY` then `sha256sum` of every file of the copy); an offline backup bound to the
//! newest checkpoint (every file written, synced and hashed into the manifest); and a restore with full
//! verification (every checksum while copying, then the open's startup integrity check over every record, chain
//! link and checkpoint, the Merkle store and index built); and an online backup over gRPC from a node serving
//! the same log in this process. Ratios are of median times on the same log.
//!
//! Usage: `cargo run -p aerodb-benches --release --bin backup-ratios -- [--records N] [--rounds N] [--quick]`

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use aerodb_benches::{bench_dir, median_min_max};
use aerodb_engine::{Db, NewRecord, Options, Payload};
use bytes::Bytes;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-admin-token-0123456789";

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p).map_or(0, |rd| {
        rd.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

fn sh(cmd: &str) -> Result<(), Box<dyn std::error::Error>> {
    let ok = Command::new("sh").args(["-c", cmd]).status()?.success();
    if !ok {
        return Err(format!("`{cmd}` failed").into());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut records, mut rounds) = (1_000_000u64, 3u64);
    aerodb_benches::parse_flags(
        "backup-ratios [--records N] [--rounds N] [--quick]",
        &mut [("--records", &mut records), ("--rounds", &mut rounds)],
        &[("--records", 50_000), ("--rounds", 1)],
    );
    let root = bench_dir("backup");
    let fsync_p50 = aerodb_benches::fsync_p50(&root)?;
    let data = root.join("data");
    let t = Instant::now();
    {
        let db = Db::open(
            &data,
            Options {
                checkpoint_every_records: 100_000,
                checkpoint_interval: None,
                ..Options::default()
            },
        )?;
        let value = Bytes::from(vec![b'v'; 256]);
        let mut done = 0;
        while done < records {
            let n = (records - done).min(1024);
            let batch: Vec<NewRecord> = (0..n)
                .map(|_| NewRecord {
                    tenant: "bench".into(),
                    payload: Payload::Event(value.clone()),
                })
                .collect();
            db.append_many(&batch)?;
            done += n;
        }
        db.checkpoint_now()?;
        db.close()?;
    }
    let dir_mb = dir_bytes(&data);
    let mut backup_mb = 0;
    eprintln!(
        "wrote {records} records ({:.0} MB in the data directory) in {:.1} s",
        dir_mb as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let key = data.join(aerodb_engine::KEY_FILE);
    // The same log served by a node in this process, for the online backup over gRPC.
    let tokens = root.join("tokens.toml");
    aerodb_server::auth::write_secret_file(
        &tokens,
        format!("[[tokens]]\nname = \"bench\"\nrole = \"admin\"\ntoken = \"{TOKEN}\"\n"),
    )?;
    let config = aerodb_server::config::Config {
        checkpoint_interval: Duration::from_secs(3600),
        ..aerodb_server::config::Config::local(data.clone(), tokens)
    };
    let rt = aerodb_server::runtime(&config)?;
    let node = aerodb_server::open_node(config)?;
    let running = aerodb_server::Running::start(&rt, node)?;
    let grpc = format!("http://{}", running.bound.grpc);
    let auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = format!("Bearer {TOKEN}").parse()?;
    let (mut base, mut backup, mut restore, mut online) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let copy = root.join("copy");
        let t = Instant::now();
        sh(&format!(
            "cp -r '{}' '{}' && find '{}' -type f -print0 | xargs -0 sha256sum > /dev/null",
            data.display(),
            copy.display(),
            copy.display()
        ))?;
        base.push(t.elapsed());
        std::fs::remove_dir_all(&copy)?;

        let out = root.join("backup");
        let t = Instant::now();
        aerodb_server::backup::offline(&data, &out, &mut |_| {}, &mut |_| {})?;
        backup.push(t.elapsed());
        backup_mb = dir_bytes(&out);

        let target = root.join("restored");
        let t = Instant::now();
        let done = aerodb_server::backup::restore(
            &out,
            &target,
            &key,
            &aerodb_server::backup::RestoreRole::Unassigned,
            None,
        )
        .map_err(|p| p.join("; "))?;
        restore.push(t.elapsed());
        if done.checked.records != records {
            return Err(format!("restored {} records of {records}", done.checked.records).into());
        }
        std::fs::remove_dir_all(&out)?;
        std::fs::remove_dir_all(&target)?;

        let t = Instant::now();
        rt.block_on(async {
            let mut client = aerodb_proto::v1::ledger_client::LedgerClient::connect(grpc.clone())
                .await?
                .max_decoding_message_size(4 << 20);
            aerodb_server::backup::online(&mut client, Some(auth.clone()), &out, &mut |_| {}, &mut |_| {})
                .await
                .map_err(Box::<dyn std::error::Error>::from)
        })?;
        online.push(t.elapsed());
        std::fs::remove_dir_all(&out)?;
        eprintln!(
            "round {}/{rounds}: baseline {:.2} s, backup {:.2} s, restore {:.2} s, online backup {:.2} s",
            r + 1,
            base[r as usize].as_secs_f64(),
            backup[r as usize].as_secs_f64(),
            restore[r as usize].as_secs_f64(),
            online[r as usize].as_secs_f64()
        );
    }
    let secs = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
    println!(
        "backup-ratios: {records} records; the data directory holds {:.0} MB (what the baseline copies and hashes, \
         preallocated segment space included), the backup {:.0} MB; {rounds} rounds interleaved; fdatasync p50 {:.0} \
         us on this disk",
        dir_mb as f64 / 1e6,
        backup_mb as f64 / 1e6,
        fsync_p50.as_secs_f64() * 1e6
    );
    println!("| run | s (median, min–max) | records/s (median) | speed vs baseline (median time ratio) |");
    println!("|---|---|---:|---:|");
    let (b50, _, _) = median_min_max(&secs(&base));
    for (name, v) in [
        ("baseline: cp -r + sha256sum", &base),
        ("aerodb backup (offline)", &backup),
        ("aerodb restore (full verification)", &restore),
        ("aerodb backup (online, gRPC from a serving node)", &online),
    ] {
        let (m, lo, hi) = median_min_max(&secs(v));
        println!(
            "| {name} | {m:.2} ({lo:.2}–{hi:.2}) | {:.0} | {:.2} |",
            records as f64 / m,
            b50 / m
        );
    }
    running.stop(&rt)?;
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
