//! The main job: starts a primary on loopback ports the OS picks, runs a demo workload over both APIs, verifies
//! what it wrote the way a client would, shows metrics, shuts down gracefully and verifies the data directory
//! offline.
//!
//! `cargo run --release -p aerodb-server --example demo` runs it and exits; add `-- --serve` to keep the server up
//! afterwards with a tour of `curl` and `aerodb` commands to try (Ctrl-C stops it). `--dir DIR` keeps the data.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use aerodb_engine::{Op, Payload, VerifierKey, VerifyOptions};
use aerodb_proto::v1 as pb;
use aerodb_server::{client::VerifiedClient, config::Config, httpc};
use bytes::Bytes;

fn token() -> String {
    let mut b = [0u8; 18];
    getrandom::getrandom(&mut b).expect("OS randomness");
    hex::encode(b)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve_after = args.iter().any(|a| a == "--serve");
    let dir = match args.iter().position(|a| a == "--dir") {
        Some(i) => PathBuf::from(args.get(i + 1).ok_or("--dir needs a path")?),
        None => std::env::temp_dir().join(format!("aerodb-demo-{}", std::process::id())),
    };
    let keep = args.iter().any(|a| a == "--dir");
    std::fs::create_dir_all(&dir)?;
    let (writer, reader, admin) = (token(), token(), token());
    let tokens = dir.join("tokens.toml");
    aerodb_server::auth::write_secret_file(
        &tokens,
        format!(
            "[[tokens]]\nname = \"demo-writer\"\nrole = \"writer\"\ntoken = \"{writer}\"\n\n\
             [[tokens]]\nname = \"demo-reader\"\nrole = \"reader\"\ntoken = \"{reader}\"\n\n\
             [[tokens]]\nname = \"demo-admin\"\nrole = \"admin\"\ntoken = \"{admin}\"\n"
        ),
    )?;
    let config = Config {
        node_id: "demo-primary".into(),
        checkpoint_interval: Duration::from_millis(500),
        origin: "aerodb-demo".into(),
        ..Config::local(dir.join("data"), tokens.clone())
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .init();
    println!("== AeroDB demo: a primary in {}", dir.display());
    let rt = aerodb_server::runtime(&config)?;
    let node = aerodb_server::open_node(config)?;
    let server = aerodb_server::Running::start(&rt, node)?;
    let bound = server.bound.clone();
    println!("   REST on http://{}   gRPC on http://{}", bound.http, bound.grpc);
    println!("   verifier key: {}", bound.verifier_key);
    let vkey = VerifierKey::parse(&bound.verifier_key)?;

    // 1. REST: a few hundred records across tenants.
    let t = Instant::now();
    for i in 0..300u32 {
        let tenant = ["acme", "globex", "initech"][i as usize % 3];
        let body = format!(
            r#"{{"tenant":"{tenant}","ops":[{{"op":"put","key":"invoice/{}","value":"amount={} status=open"}}]}}"#,
            i % 100,
            100 + i
        );
        let r = httpc::call(bound.http, "POST", "/v1/records", Some(&writer), Some(&body))?;
        if r.status != 201 {
            return Err(format!(
                "REST append answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )
            .into());
        }
    }
    println!(
        "1. REST: 300 durable appends from one client in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // Keys belong to a tenant: invoice/7 was written by globex (record 8), invoice/7 of acme is another key.
    let r = httpc::call(
        bound.http,
        "GET",
        "/v1/kv/invoice%2F7?tenant=globex&at=8",
        Some(&reader),
        None,
    )?;
    println!("   GET /v1/kv/invoice%2F7?tenant=globex&at=8 -> {}", r.json());
    if r.status != 200 {
        return Err(format!("the key read answered {}", r.status).into());
    }

    // 2. gRPC: 64 concurrent clients for two seconds.
    let done = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..64u64 {
            let done = done.clone();
            let writer = writer.clone();
            let url = format!("http://{}", bound.grpc);
            tasks.push(tokio::spawn(async move {
                let Ok(mut c) = pb::ledger_client::LedgerClient::connect(url).await else {
                    return;
                };
                while t.elapsed() < Duration::from_secs(2) {
                    let mut req = tonic::Request::new(pb::AppendRequest {
                        record: Some(pb::NewRecord {
                            tenant: format!("client-{w}"),
                            payload: Some(pb::new_record::Payload::Event(
                                format!("event from client {w}").into_bytes(),
                            )),
                        }),
                        prove: false,
                    });
                    if let Ok(v) = format!("Bearer {writer}").parse() {
                        req.metadata_mut().insert("authorization", v);
                    }
                    if c.append(req).await.is_err() {
                        return;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let n = done.load(Ordering::Relaxed);
    println!(
        "2. gRPC: 64 concurrent clients, {n} durable appends in {:.1} s ({:.0}/s, each acknowledged only after fdatasync)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );

    // 3. A verifying client: its write and a random read, proven against signed checkpoints.
    let (w, rec) = rt.block_on(async {
        let mut vc =
            VerifiedClient::connect(&format!("http://{}", bound.grpc), Some(&writer), vkey.clone()).await?;
        let w = vc
            .append(
                "acme",
                Payload::Batch(vec![Op::Put {
                    key: Bytes::from_static(b"invoice/42"),
                    value: Bytes::from_static(b"paid"),
                }]),
            )
            .await?;
        let rec = vc.verified_record(150).await?;
        Ok::<_, aerodb_server::client::ClientError>((w, rec))
    })?;
    println!(
        "3. verified write: CommitId {} proven in the checkpoint of size {} signed by {}",
        w.commit_id,
        w.checkpoint.size,
        vkey.name()
    );
    println!(
        "   verified read: record 150 (tenant {}) proven against the newest checkpoint",
        rec.tenant
    );

    // 4. What the server reports.
    let ha = httpc::call(bound.http, "GET", "/v1/ha/status", Some(&reader), None)?.json();
    println!(
        "4. HA status: role {} state {} commit_id {}",
        ha["role"], ha["state"], ha["commit_id"]
    );
    let metrics = String::from_utf8(httpc::call(bound.http, "GET", "/metrics", Some(&reader), None)?.body)?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("aerodb_appended_records_total")
            || l.starts_with("aerodb_wal_fsyncs_total")
            || l.starts_with("aerodb_commit_id")
            || l.starts_with("ha_is_leader")
    }) {
        println!("   {line}");
    }

    if serve_after {
        let g = bound.grpc;
        let h = bound.http;
        println!("\n== The server keeps running. Try (Ctrl-C to stop):");
        println!("curl -s -XPOST -H 'Authorization: Bearer {writer}' -H 'Content-Type: application/json' \\\n  http://{h}/v1/records?prove=true -d '{{\"tenant\":\"acme\",\"ops\":[{{\"op\":\"put\",\"key\":\"hello\",\"value\":\"world\"}}]}}'");
        println!("curl -s -H 'Authorization: Bearer {reader}' 'http://{h}/v1/kv/hello?tenant=acme'");
        println!("curl -s -H 'Authorization: Bearer {reader}' 'http://{h}/v1/proofs/inclusion?commit_id=1'");
        println!("curl -s -H 'Authorization: Bearer {reader}' http://{h}/metrics | head");
        println!("cargo run -q -p aerodb-server --bin aerodb -- --grpc http://{g} --token {reader} proof 1 --verifier-key {}", bound.verifier_key);
        println!("cargo run -q -p aerodb-server --bin aerodb -- --grpc http://{g} --token {writer} append --tenant acme --put k=v --verifier-key {}", bound.verifier_key);
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }

    // 5. Graceful shutdown, then the offline verifier over the whole directory.
    server.stop(&rt)?;
    let t = Instant::now();
    let report = aerodb_engine::verify_dir(
        &dir.join("data"),
        &VerifyOptions {
            verifier: Some(vkey),
            strict: true,
        },
        &mut |_, _| {},
    )?;
    println!(
        "5. shut down cleanly; offline verifier (strict): {} records, {} Merkle nodes, {}/{} checkpoints, {} consistency proofs, {} problems, {:.2} s",
        report.records,
        report.nodes_checked,
        report.checkpoints_ok,
        report.checkpoints,
        report.consistency_ok,
        report.problems.len(),
        t.elapsed().as_secs_f64()
    );
    if !keep {
        std::fs::remove_dir_all(&dir)?;
    }
    if !report.ok() {
        return Err(format!("verification found problems: {:?}", report.problems).into());
    }
    Ok(())
}
