//! `aerodb-proto`: the protobuf definitions of AeroDB's client API (`proto/aerodb/v1/aerodb.proto`, package
//! `aerodb.v1`), generated with tonic/prost from a vendored `protoc`.
#![forbid(unsafe_code)]

/// Package `aerodb.v1`: messages, the `Ledger` client and the `Ledger` server trait.
#[allow(missing_docs, clippy::all, clippy::pedantic, reason = "generated code")]
pub mod v1 {
    tonic::include_proto!("aerodb.v1");
}

/// etcd's v3 API, the part AeroDB's etcd authority uses (`proto/etcd/`): leases and the key-value record.
#[allow(missing_docs, clippy::all, clippy::pedantic, reason = "generated code")]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's v3 election service (campaign, leader, observe, resign).
#[allow(missing_docs, clippy::all, clippy::pedantic, reason = "generated code")]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
