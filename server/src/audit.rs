//! `aerodb audit export`: builds an auditor bundle (`aerodb_engine::audit`) from a running node over gRPC — the
//! newest signed checkpoint, each selected record with its inclusion proof against it, and optionally an earlier
//! checkpoint the auditor already holds with the consistency proof to the newer one.

use aerodb_engine::{audit::Bundle, audit::BundledRecord, merkle::Hash, Checkpoint};
use aerodb_proto::v1 as pb;
use tonic::{metadata::MetadataValue, transport::Channel, Request};

/// The most records one export takes (a bundle's own limit is larger; this keeps one call bounded).
pub const MAX_EXPORT: u64 = 100_000;

fn hashes(v: Vec<Vec<u8>>) -> Result<Vec<Hash>, String> {
    v.into_iter()
        .map(|h| {
            h.try_into()
                .map_err(|_| "the node sent a proof hash that is not 32 bytes".to_string())
        })
        .collect()
}

fn with_auth<T>(auth: &Option<MetadataValue<tonic::metadata::Ascii>>, m: T) -> Request<T> {
    let mut r = Request::new(m);
    if let Some(a) = auth {
        r.metadata_mut().insert("authorization", a.clone());
    }
    r
}

/// What to export.
#[derive(Clone, Debug, Default)]
pub struct ExportRequest {
    /// First CommitId.
    pub from: u64,
    /// Last CommitId.
    pub to: u64,
    /// Only this tenant's records.
    pub tenant: Option<String>,
    /// A checkpoint note of the same log the auditor holds: the bundle adds the consistency proof from it.
    pub since: Option<String>,
    /// k > 0: prove against the newest checkpoint with at least k witness cosignatures (kept on its note).
    pub cosigned: u32,
}

/// Exports records `from..=to` (only `tenant`'s when given) with proofs against the node's newest checkpoint
/// (with `cosigned` k > 0, the newest one with at least k witness cosignatures), and, with `since`, the
/// consistency proof from that earlier checkpoint. `progress` sees each record.
pub async fn export(
    client: &mut pb::ledger_client::LedgerClient<Channel>,
    auth: Option<MetadataValue<tonic::metadata::Ascii>>,
    req: ExportRequest,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Bundle, String> {
    let ExportRequest {
        from,
        to,
        tenant,
        since,
        cosigned,
    } = req;
    if from == 0 || to < from {
        return Err(format!("bad range {from}..={to}: CommitIds start at 1"));
    }
    if to - from + 1 > MAX_EXPORT {
        return Err(format!(
            "{} records asked; one export takes at most {MAX_EXPORT}",
            to - from + 1
        ));
    }
    let cp = client
        .latest_checkpoint(with_auth(&auth, pb::LatestCheckpointRequest { cosigned }))
        .await
        .map_err(|s| format!("the newest checkpoint: {}", s.message()))?
        .into_inner();
    if to > cp.size {
        return Err(format!(
            "the newest checkpoint covers {} records; --to {to} is beyond it (ask after the next checkpoint)",
            cp.size
        ));
    }
    // Which CommitIds: every one in the range, or the tenant's (listed a page at a time).
    let ids: Vec<u64> = match &tenant {
        None => (from..=to).collect(),
        Some(t) => {
            let mut ids = Vec::new();
            let mut next = from;
            while next != 0 && next <= to {
                let page = client
                    .scan_records(with_auth(
                        &auth,
                        pb::ScanRecordsRequest {
                            from: next,
                            limit: 1000,
                            tenant: Some(t.clone()),
                        },
                    ))
                    .await
                    .map_err(|s| format!("listing the tenant's records: {}", s.message()))?
                    .into_inner();
                ids.extend(page.records.iter().map(|r| r.commit_id).filter(|c| *c <= to));
                next = page.next_from;
            }
            ids
        }
    };
    let mut records = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let r = client
            .inclusion_proof(with_auth(
                &auth,
                pb::InclusionProofRequest {
                    commit_id: *id,
                    tree_size: cp.size,
                },
            ))
            .await
            .map_err(|s| format!("the proof of record {id}: {}", s.message()))?
            .into_inner();
        let record = r.record.ok_or_else(|| format!("no record {id} in the answer"))?;
        let proof = r.proof.ok_or_else(|| format!("no proof for record {id}"))?;
        records.push(BundledRecord {
            commit_id: *id,
            canonical: record.canonical,
            proof: hashes(proof.hashes)?,
        });
        progress(i as u64 + 1, ids.len() as u64);
    }
    let prior = match since {
        None => None,
        Some(note) => {
            let body = note.split("\n\n").next().unwrap_or_default();
            let old = Checkpoint::parse_body(&format!("{body}\n"))
                .map_err(|e| format!("the earlier checkpoint: {e}"))?;
            let p = client
                .consistency_proof(with_auth(
                    &auth,
                    pb::ConsistencyProofRequest {
                        old_size: old.size,
                        new_size: cp.size,
                    },
                ))
                .await
                .map_err(|s| format!("the consistency proof: {}", s.message()))?
                .into_inner();
            Some((note, hashes(p.hashes)?))
        }
    };
    Ok(Bundle {
        tenant,
        checkpoint: cp.note,
        prior,
        records,
    })
}
