//! RFC 9162 (RFC 6962) Merkle tree hashing, proofs and their verification.
//!
//! Proofs are computed from *stored perfect subtrees*: node `(level, index)` is the root of leaves
//! `[index·2^level, (index+1)·2^level)`. Every range the RFC's recursive definitions visit is either such a node
//! or the right edge of the tree, which is a fold of at most log₂ n stored nodes; so a proof reads O(log n) stored
//! hashes and never rehashes the log. The verification functions follow RFC 9162 §2.1.3.2 and §2.1.4.2 and need
//! nothing but the hashes.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Upper bound on proof length accepted by the verifiers (a tree of 2^64 leaves needs at most 64 hashes).
pub const MAX_PROOF_HASHES: usize = 64;

/// The root of the empty tree: SHA-256 of the empty string.
#[must_use]
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 ‖ data)`: the hash of a leaf.
#[must_use]
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`: the hash of an interior node.
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Where proofs read stored perfect-subtree hashes from.
pub trait NodeSource {
    /// The error of a failed read.
    type Error;
    /// The root of leaves `[index·2^level, (index+1)·2^level)`, which must lie within the tree.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// Largest power of two strictly smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves `[start, end)`, for ranges the RFC recursion produces (start aligned to the left part's size).
pub fn range_hash<S: NodeSource>(src: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let n = end - start;
    debug_assert!(n >= 1);
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return src.node(n.trailing_zeros(), start / n);
    }
    let k = split(n);
    let left = range_hash(src, start, start + k)?;
    let right = range_hash(src, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root of a tree of `size` leaves.
pub fn root<S: NodeSource>(src: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(src, 0, size)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1). `index < size`.
pub fn inclusion_proof<S: NodeSource>(src: &S, index: u64, size: u64) -> Result<Vec<Hash>, S::Error> {
    assert!(
        index < size,
        "inclusion proof of leaf {index} in a tree of {size}"
    );
    let mut out = Vec::with_capacity(64 - size.leading_zeros() as usize);
    path(src, index, 0, size, &mut out)?;
    Ok(out)
}

fn path<S: NodeSource>(src: &S, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) -> Result<(), S::Error> {
    let n = end - start;
    if n == 1 {
        return Ok(());
    }
    let k = split(n);
    if m - start < k {
        path(src, m, start, start + k, out)?;
        out.push(range_hash(src, start + k, end)?);
    } else {
        path(src, m, start + k, end, out)?;
        out.push(range_hash(src, start, start + k)?);
    }
    Ok(())
}

/// The consistency proof between the trees of `old_size` and `new_size` leaves (RFC 9162 §2.1.4.1).
/// `0 < old_size ≤ new_size`.
pub fn consistency_proof<S: NodeSource>(
    src: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, S::Error> {
    assert!(
        0 < old_size && old_size <= new_size,
        "consistency proof {old_size} -> {new_size}"
    );
    let mut out = Vec::with_capacity(2 * (64 - new_size.leading_zeros() as usize));
    subproof(src, old_size, 0, new_size, true, &mut out)?;
    Ok(out)
}

fn subproof<S: NodeSource>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(range_hash(src, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, start, start + k, complete, out)?;
        out.push(range_hash(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(range_hash(src, start, start + k)?);
    }
    Ok(())
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
#[must_use]
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size || proof.len() > MAX_PROOF_HASHES {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2).
#[must_use]
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    // As the reference (Go's `tlog.CheckTree`): a proof is from a tree of at least one leaf. Every tree extends
    // the empty one, so there is nothing to check from size 0, and a caller that trusts no tree yet must say so
    // itself rather than pass size 0 and any root.
    if old_size == 0 || old_size > new_size || proof.len() > MAX_PROOF_HASHES {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && fr == *old_root && sr == *new_root
}

/// Perfect-subtree hashes kept in memory, level by level; appending a leaf completes O(1) amortized nodes.
/// Used by the in-memory mode, by the verifier and as the reference in tests.
#[derive(Clone, Debug, Default)]
pub struct MemTree {
    levels: Vec<Vec<Hash>>,
}

impl MemTree {
    /// An empty tree.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf hash; returns the nodes it completed as `(level, index, hash)`, leaf first.
    pub fn push(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let mut done = Vec::new();
        let mut h = leaf;
        let mut level = 0usize;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let l = &mut self.levels[level];
            l.push(h);
            let index = l.len() as u64 - 1;
            done.push((level as u32, index, h));
            if index.is_multiple_of(2) {
                return done;
            }
            h = node_hash(&l[l.len() - 2], &h);
            level += 1;
        }
    }

    /// The stored hashes of one level.
    #[must_use]
    pub fn level(&self, level: u32) -> &[Hash] {
        self.levels.get(level as usize).map_or(&[], Vec::as_slice)
    }
}

/// Reading a node that was never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Merkle node (level {level}, index {index}) is not stored")]
pub struct MissingNode {
    /// The level asked for.
    pub level: u32,
    /// The index asked for.
    pub index: u64,
}

impl NodeSource for MemTree {
    type Error = MissingNode;

    fn node(&self, level: u32, index: u64) -> Result<Hash, MissingNode> {
        self.levels
            .get(level as usize)
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(MissingNode { level, index })
    }
}

/// The textbook recursive definitions of RFC 9162 §2.1, over all leaf hashes: slow, obviously right, used to
/// check the stored-node implementation.
pub mod reference {
    use super::{node_hash, split, Hash};

    /// `MTH(D[n])`.
    #[must_use]
    pub fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => super::empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// `PATH(m, D[n])`.
    #[must_use]
    pub fn path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return vec![];
        }
        let k = split(n as u64) as usize;
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    /// `PROOF(m, D[n])`.
    #[must_use]
    pub fn proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        subproof(m, leaves, true)
    }

    fn subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if complete { vec![] } else { vec![mth(leaves)] };
        }
        let k = split(n as u64) as usize;
        if m <= k {
            let mut p = subproof(m, &leaves[..k], complete);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = subproof(m - k, &leaves[k..], false);
            p.push(mth(&leaves[..k]));
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// The Certificate Transparency reference inputs and tree heads for sizes 0..=8, as published with the
    /// RFC 6962 implementations (Google's certificate-transparency, transparency-dev/merkle).
    const CT_LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn ct_tree() -> (MemTree, Vec<Hash>) {
        let leaves: Vec<Hash> = CT_LEAVES.iter().map(|l| leaf_hash(&unhex(l))).collect();
        let mut t = MemTree::new();
        for l in &leaves {
            t.push(*l);
        }
        (t, leaves)
    }

    #[test]
    fn roots_match_the_published_ct_vectors() {
        let (t, leaves) = ct_tree();
        for n in 0..=8u64 {
            assert_eq!(
                root(&t, n).unwrap(),
                h(CT_ROOTS[n as usize]),
                "stored-node root, size {n}"
            );
            assert_eq!(
                reference::mth(&leaves[..n as usize]),
                h(CT_ROOTS[n as usize]),
                "reference, size {n}"
            );
        }
    }

    #[test]
    fn inclusion_proofs_match_the_published_ct_vectors() {
        let (t, leaves) = ct_tree();
        // (leaf index, tree size, proof) from the CT test data.
        let vectors: [(u64, u64, &[&str]); 4] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, size, proof) in vectors {
            let want: Vec<Hash> = proof.iter().map(|p| h(p)).collect();
            assert_eq!(
                inclusion_proof(&t, index, size).unwrap(),
                want,
                "leaf {index} size {size}"
            );
            assert!(verify_inclusion(
                &leaves[index as usize],
                index,
                size,
                &want,
                &h(CT_ROOTS[size as usize])
            ));
            assert!(!verify_inclusion(
                &leaves[index as usize],
                index,
                size,
                &want,
                &h(CT_ROOTS[0])
            ));
        }
    }

    #[test]
    fn consistency_proofs_match_the_published_ct_vectors() {
        let (t, _) = ct_tree();
        let vectors: [(u64, u64, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (old, new, proof) in vectors {
            let want: Vec<Hash> = proof.iter().map(|p| h(p)).collect();
            assert_eq!(consistency_proof(&t, old, new).unwrap(), want, "{old} -> {new}");
            let (r1, r2) = (h(CT_ROOTS[old as usize]), h(CT_ROOTS[new as usize]));
            assert!(verify_consistency(old, new, &r1, &r2, &want), "{old} -> {new}");
            assert!(!verify_consistency(old, new, &r2, &r1, &want) || old == new);
        }
    }

    #[test]
    fn all_proofs_agree_with_the_reference_and_verify_up_to_300_leaves() {
        let mut t = MemTree::new();
        let mut leaves = Vec::new();
        for i in 0..300u32 {
            let l = leaf_hash(&i.to_le_bytes());
            leaves.push(l);
            t.push(l);
        }
        for n in 1..=300u64 {
            let r = root(&t, n).unwrap();
            assert_eq!(r, reference::mth(&leaves[..n as usize]));
            for m in (0..n).step_by(1 + (n as usize / 17)) {
                let p = inclusion_proof(&t, m, n).unwrap();
                assert_eq!(p, reference::path(m as usize, &leaves[..n as usize]));
                assert!(verify_inclusion(&leaves[m as usize], m, n, &p, &r));
                // Any change to the proof, index or leaf breaks it.
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(&leaves[m as usize], m, n, &bad, &r));
                }
                // Another leaf does not verify with this proof. (A different tree size can: RFC 9162 proofs do not
                // encode the size, which is why the size always comes from the signed checkpoint.)
                let other = leaf_hash(b"not a leaf of this tree");
                assert!(!verify_inclusion(&other, m, n, &p, &r), "m={m} n={n}");
            }
            for m in (1..=n).step_by(1 + (n as usize / 13)) {
                let p = consistency_proof(&t, m, n).unwrap();
                assert_eq!(p, reference::proof(m as usize, &leaves[..n as usize]));
                let rm = root(&t, m).unwrap();
                assert!(verify_consistency(m, n, &rm, &r, &p), "{m} -> {n}");
                if m < n {
                    assert!(!verify_consistency(m, n, &r, &rm, &p), "swapped roots {m} -> {n}");
                }
            }
        }
    }

    #[test]
    fn proofs_round_trip_for_every_size_up_to_3000() {
        // Every tree size from 1 to 3000: the root matches an independently folded root, and inclusion proofs (first,
        // last, and a spread of leaves) and consistency proofs (from several older sizes) verify. Sizes up to 300
        // are also compared hash-for-hash with the textbook recursion above.
        let mut t = MemTree::new();
        let mut leaves = Vec::new();
        let mut frontier: Vec<(u32, Hash)> = Vec::new();
        let mut roots = vec![empty_root()];
        for i in 0..3000u32 {
            let l = leaf_hash(&i.to_be_bytes());
            leaves.push(l);
            t.push(l);
            // An independent incremental root: fold the stack of perfect subtrees right to left.
            let mut cur = (0u32, l);
            while let Some(&(lvl, left)) = frontier.last() {
                if lvl != cur.0 {
                    break;
                }
                frontier.pop();
                cur = (lvl + 1, node_hash(&left, &cur.1));
            }
            frontier.push(cur);
            let mut it = frontier.iter().rev();
            let mut r = it.next().map(|x| x.1).unwrap();
            for (_, left) in it {
                r = node_hash(left, &r);
            }
            roots.push(r);
        }
        for n in 1..=3000u64 {
            assert_eq!(root(&t, n).unwrap(), roots[n as usize], "root at {n}");
            let r = roots[n as usize];
            for m in [0, n / 3, n / 2, n - 1] {
                let p = inclusion_proof(&t, m, n).unwrap();
                assert!(
                    verify_inclusion(&leaves[m as usize], m, n, &p, &r),
                    "inclusion {m} in {n}"
                );
            }
            for old in [1, n / 2, n - 1, n].into_iter().filter(|&o| o >= 1) {
                let p = consistency_proof(&t, old, n).unwrap();
                assert!(
                    verify_consistency(old, n, &roots[old as usize], &r, &p),
                    "consistency {old} -> {n}"
                );
            }
        }
    }

    #[test]
    fn verifiers_reject_malformed_input() {
        let l = leaf_hash(b"x");
        assert!(!verify_inclusion(&l, 1, 1, &[], &l));
        assert!(!verify_inclusion(&l, 0, 1, &[l], &l));
        assert!(!verify_inclusion(&l, 0, 2, &vec![l; 65], &l));
        assert!(!verify_consistency(2, 1, &l, &l, &[]));
        assert!(!verify_consistency(1, 1, &l, &l, &[l]));
        assert!(!verify_consistency(1, 2, &l, &l, &[]));
        // From size 0 there is no proof, whatever the roots (Go refuses it too).
        let e = empty_root();
        assert!(!verify_consistency(0, 1, &e, &l, &[]));
        assert!(!verify_consistency(0, 1, &l, &l, &[]));
        assert!(!verify_consistency(0, 0, &e, &e, &[]));
    }
}
