//! The `aerodb` command-line client against a real server: every subcommand in human and `--json` form, with
//! the exit codes its `--help` documents (0 success, 1 failure, 2 usage error), and no progress bar in the output
//! when stderr is not a terminal.

mod common;

use std::process::{Command, Output};

use common::{start, TempDir, ADMIN, READER, WRITER};

struct Cli {
    grpc: String,
}

impl Cli {
    fn run(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_aerodb"))
            .args(["--grpc", &self.grpc, "--token", token])
            .args(args)
            .output()
            .expect("run aerodb")
    }

    /// Runs and expects exit 0; returns stdout.
    fn ok(&self, token: &str, args: &[&str]) -> String {
        let out = self.run(token, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "aerodb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains('\r'),
            "a progress bar was drawn on a stderr that is not a terminal"
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    fn json(&self, token: &str, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let text = self.ok(token, &a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("aerodb {args:?} --json printed {text:?}: {e}"))
    }

    /// Runs and expects exit `code`; returns stderr.
    fn fails(&self, token: &str, args: &[&str], code: i32) -> String {
        let out = self.run(token, args);
        assert_eq!(out.status.code(), Some(code), "aerodb {args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[test]
fn every_subcommand_in_human_and_json_form_with_documented_exit_codes() {
    let tmp = TempDir::new("cli");
    let mut server = start(tmp.path(), &["--checkpoint-every-records", "3"]);
    let cli = Cli {
        grpc: format!("http://{}", server.grpc),
    };
    let vkey = server.verifier_key.clone();
    let mut runs = 0;

    // append: human, JSON, verified against a signed checkpoint, an event; bad input exits 1.
    let out = cli.ok(WRITER, &["append", "--tenant", "acme", "--put", "invoice/1=10"]);
    assert!(out.starts_with("appended CommitId 1 (record "), "{out}");
    let v = cli.json(
        WRITER,
        &[
            "append",
            "--tenant",
            "acme",
            "--put",
            "invoice/1=11",
            "--delete",
            "x",
        ],
    );
    assert_eq!(
        (v["commit_id"].as_u64(), v["verified"].as_bool()),
        (Some(2), Some(false))
    );
    let v = cli.json(
        WRITER,
        &[
            "append",
            "--tenant",
            "acme",
            "--event",
            "shipped",
            "--verifier-key",
            &vkey,
        ],
    );
    assert_eq!(
        (v["commit_id"].as_u64(), v["verified"].as_bool()),
        (Some(3), Some(true))
    );
    assert!(v["checkpoint_size"].as_u64().unwrap() >= 3, "{v}");
    let err = cli.fails(WRITER, &["append", "--tenant", "acme", "--put", "novalue"], 1);
    assert!(err.contains("is not key=value"), "{err}");
    let err = cli.fails(WRITER, &["append", "--tenant", "acme"], 1);
    assert!(err.contains("nothing to append"), "{err}");
    runs += 6;

    // get: now, at a CommitId, a missing key (exit 1).
    assert_eq!(
        cli.ok(READER, &["get", "invoice/1", "--tenant", "acme"]).trim(),
        "11"
    );
    let v = cli.json(READER, &["get", "invoice/1", "--tenant", "acme", "--at", "1"]);
    assert_eq!((v["value"].as_str(), v["at"].as_u64()), (Some("10"), Some(1)));
    let err = cli.fails(READER, &["get", "nope", "--tenant", "acme"], 1);
    assert!(err.contains("has no value"), "{err}");
    let err = cli.fails(READER, &["get", "invoice/1", "--tenant", "globex"], 1);
    assert!(err.contains("has no value"), "another tenant's key space: {err}");
    let err = cli.fails(READER, &["get", "invoice/1"], 1);
    assert!(err.contains("tenant"), "{err}");
    runs += 5;

    // record.
    let out = cli.ok(READER, &["record", "2"]);
    assert!(
        out.starts_with("record 2 (epoch ") && out.contains("tenant acme"),
        "{out}"
    );
    let v = cli.json(READER, &["record", "3"]);
    assert_eq!(
        (v["commit_id"].as_u64(), v["tenant"].as_str()),
        (Some(3), Some("acme"))
    );
    assert_eq!(v["record_hash"].as_str().map(str::len), Some(64));
    runs += 2;

    // proof: verified locally; a wrong key is a failure.
    let out = cli.ok(READER, &["proof", "2", "--verifier-key", &vkey]);
    assert!(out.to_lowercase().contains("verified"), "{out}");
    let v = cli.json(READER, &["proof", "1", "--verifier-key", &vkey]);
    assert_eq!(v["commit_id"].as_u64(), Some(1), "{v}");
    let other = aerodb_engine::SigningKey::from_seed("aerodb-ledger", [7u8; 32])
        .unwrap()
        .verifier()
        .to_string();
    cli.fails(READER, &["proof", "1", "--verifier-key", &other], 1);
    runs += 3;

    // checkpoint: the signed note verbatim; JSON carries it too.
    let note = cli.ok(READER, &["checkpoint"]);
    assert!(
        note.starts_with("aerodb-ledger\n") && note.contains("\n— aerodb-ledger "),
        "{note}"
    );
    let v = cli.json(READER, &["checkpoint"]);
    assert!(v.to_string().contains("aerodb-ledger"), "{v}");
    runs += 2;

    // status: human and JSON.
    let out = cli.ok(READER, &["status"]);
    assert!(out.starts_with("node "), "{out}");
    let v = cli.json(READER, &["status"]);
    assert_eq!(
        (v["writable"].as_bool(), v["commit_id"].as_u64()),
        (Some(true), Some(3)),
        "{v}"
    );
    runs += 2;

    // Refusals: an unknown token, a reader writing, an unreachable server — all exit 1; a usage error exits 2.
    let err = cli.fails("not-a-token-0123456789", &["status"], 1);
    assert!(err.to_lowercase().contains("token"), "{err}");
    cli.fails(READER, &["append", "--tenant", "acme", "--event", "x"], 1);
    let dead = Cli {
        grpc: "http://127.0.0.1:1".into(),
    };
    cli.fails(ADMIN, &["get", "x"], 1);
    dead.fails(READER, &["status"], 1);
    cli.fails(READER, &["no-such-command"], 2);
    cli.fails(READER, &["get"], 2);
    runs += 6;
    let help = cli.ok(READER, &["--help"]);
    assert!(
        help.contains("Exit status: 0 on success; 1 on any failure"),
        "{help}"
    );

    // Offline: verify and inspect on the stopped node's directory; keygen.
    assert!(server.terminate().success());
    let data = server.data.to_str().unwrap().to_owned();
    let out = cli.ok(READER, &["verify", &data, "--strict"]);
    assert!(out.contains("OK:"), "{out}");
    let v = cli.json(READER, &["verify", &data, "--strict", "--verifier-key", &vkey]);
    assert_eq!(
        (v["ok"].as_bool(), v["records"].as_u64()),
        (Some(true), Some(3)),
        "{v}"
    );
    // A wrong verifier key: every checkpoint is damage — the report still prints, the exit is 1.
    let out = cli.run(READER, &["--json", "verify", &data, "--verifier-key", &other]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(
        (v["ok"].as_bool(), v["damage"].as_u64().map(|d| d > 0)),
        (Some(false), Some(true)),
        "{v}"
    );
    let out = cli.ok(READER, &["inspect", &data, "--limit", "2"]);
    assert_eq!(
        out.lines().filter(|l| l.contains("tenant acme")).count(),
        2,
        "{out}"
    );
    let v = cli.json(READER, &["inspect", &data, "--from", "2"]);
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    let key = tmp.path().join("new.key");
    let out = cli.ok(READER, &["keygen", "--out", key.to_str().unwrap()]);
    assert!(
        out.contains("mode 0600") && out.contains("verifier key: aerodb-ledger+"),
        "{out}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    cli.fails(READER, &["keygen", "--out", key.to_str().unwrap()], 1);
    runs += 8;
    common::report_figure(
        "cli",
        &format!("{runs} aerodb runs against a real server and its directory, exit codes as documented"),
    );
}
