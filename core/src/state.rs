//! The directory as a pure state machine: entries are applied in log order, each one
//! authorised against the binding it supersedes. The gateway's replica and an auditor's
//! replay are this state; the client's history check is the same replay, per address.

use std::collections::HashMap;

use blockpost_proto::v1::LogEntry;
use ed25519_dalek::VerifyingKey;
use prost::Message as _;

use crate::{Address, Binding, Error, Result, authorize_entry, ed25519_key};

/// The current state of one address.
#[derive(Clone, Debug)]
pub struct Participant {
    /// Index of the newest entry.
    pub current: u64,
    /// The binding of that entry (without its certificate, to keep the state small).
    pub binding: Binding,
    /// The current ed25519 key, decoded once.
    pub signing_key: VerifyingKey,
    /// Indexes of every entry of the address, oldest first.
    pub history: Vec<u64>,
    /// The signing key each entry bound, by entry index, oldest first (a revocation binds
    /// none).
    pub keys: Vec<(u64, VerifyingKey)>,
}

impl Participant {
    /// Whether the newest entry revoked the binding.
    pub fn revoked(&self) -> bool {
        self.binding.revoked()
    }

    /// The current x25519 key.
    pub fn encryption_key(&self) -> [u8; 32] {
        self.binding.encryption_key
    }

    /// The signing key that entry `index` of this address bound.
    pub fn key_at(&self, index: u64) -> Option<VerifyingKey> {
        self.keys.iter().find(|(i, _)| *i == index).map(|(_, k)| *k)
    }
}

/// What applying one entry changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Its log index.
    pub index: u64,
    /// The binding it states.
    pub binding: Binding,
}

/// An entry checked against a state, not applied yet.
#[derive(Clone, Debug)]
pub struct Prepared {
    index: u64,
    predecessor: Option<u64>,
    address: Address,
    binding: Binding,
    signing_key: VerifyingKey,
}

/// Every address's current binding and history, built by applying log entries in order.
#[derive(Clone, Debug, Default)]
pub struct DirectoryState {
    size: u64,
    addresses: HashMap<Address, Participant>,
}

impl DirectoryState {
    /// The empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries applied: the index of the next one.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of addresses ever bound.
    pub fn addresses(&self) -> usize {
        self.addresses.len()
    }

    /// Decodes, authorises and applies entry `index`. An entry that is not the next one,
    /// does not decode, or is not authorised is an error and leaves the state unchanged.
    pub fn apply(&mut self, index: u64, entry: &[u8]) -> Result<Applied> {
        let p = self.prepare(index, entry)?;
        self.commit(p)
    }

    /// [`DirectoryState::apply`] for an entry decoded already.
    pub fn apply_decoded(&mut self, index: u64, e: &LogEntry) -> Result<Applied> {
        let p = self.prepare_decoded(index, e)?;
        self.commit(p)
    }

    /// Checks entry `index` against this state without changing it: the expensive half of
    /// [`DirectoryState::apply`], which a caller can run under a read lock.
    pub fn prepare(&self, index: u64, entry: &[u8]) -> Result<Prepared> {
        let e = LogEntry::decode(entry).map_err(|err| Error::Malformed {
            what: "log entry",
            why: err.to_string(),
        })?;
        self.prepare_decoded(index, &e)
    }

    fn prepare_decoded(&self, index: u64, e: &LogEntry) -> Result<Prepared> {
        if index != self.size {
            return Err(Error::OutOfOrder {
                expected: self.size,
                got: index,
            });
        }
        let address = Address::parse(&e.address)?;
        let prev = self.addresses.get(&address);
        let binding = authorize_entry(e, prev.map(|p| (p.current, &p.binding)))?;
        let signing_key = ed25519_key(&binding.signing_key)?;
        Ok(Prepared {
            index,
            predecessor: prev.map(|p| p.current),
            address,
            binding,
            signing_key,
        })
    }

    /// Applies an entry [`DirectoryState::prepare`] checked, if the state is still the one
    /// it was checked against.
    pub fn commit(&mut self, p: Prepared) -> Result<Applied> {
        let current = self.addresses.get(&p.address).map(|x| x.current);
        if p.index != self.size || current != p.predecessor {
            return Err(Error::OutOfOrder {
                expected: self.size,
                got: p.index,
            });
        }
        let mut lean = p.binding.clone();
        lean.certificate = Vec::new();
        let index = p.index;
        let entry = self
            .addresses
            .entry(p.address)
            .or_insert_with(|| Participant {
                current: index,
                binding: lean.clone(),
                signing_key: p.signing_key,
                history: Vec::new(),
                keys: Vec::new(),
            });
        entry.current = index;
        entry.binding = lean;
        entry.signing_key = p.signing_key;
        entry.history.push(index);
        if !p.binding.revoked() {
            entry.keys.push((index, p.signing_key));
        }
        self.size += 1;
        Ok(Applied {
            index,
            binding: p.binding,
        })
    }

    /// Entry `index`, which the log holds but the rules do not authorise, binds nothing:
    /// the state moves past it unchanged otherwise, so the entries after it are still
    /// checked (one that names it as its predecessor is then refused in turn). Only for a
    /// follower of a log; a directory never writes such an entry. An index that is not
    /// the next one changes nothing.
    pub fn void(&mut self, index: u64) {
        if index == self.size {
            self.size += 1;
        }
    }

    /// The current state of `address`.
    pub fn participant(&self, address: &str) -> Option<&Participant> {
        // Addresses are compared as text; a string that is not an address is in no state.
        Address::parse(address)
            .ok()
            .and_then(|a| self.addresses.get(&a))
    }
}

/// Checks that `entries` (log index and bytes, oldest first) are the whole history of
/// `address`: a registration, then rotations, then at most one revocation, each entry
/// naming the one before it and authorised by it. Returns the bindings in order.
pub fn verify_history(address: &Address, entries: &[(u64, &[u8])]) -> Result<Vec<Binding>> {
    let mut out: Vec<(u64, Binding)> = Vec::with_capacity(entries.len());
    for (index, bytes) in entries {
        let e = LogEntry::decode(*bytes).map_err(|err| Error::Malformed {
            what: "log entry",
            why: err.to_string(),
        })?;
        if e.address != address.as_str() {
            return Err(Error::WrongPredecessor {
                address: address.to_string(),
                why: format!("entry {index} is for {:?}", e.address),
            });
        }
        if let Some((prev, _)) = out.last()
            && index <= prev
        {
            return Err(Error::WrongPredecessor {
                address: address.to_string(),
                why: format!("entry {index} comes after entry {prev}"),
            });
        }
        let b = authorize_entry(&e, out.last().map(|(i, b)| (*i, b)))?;
        out.push((*index, b));
    }
    if out.is_empty() {
        return Err(Error::WrongPredecessor {
            address: address.to_string(),
            why: "empty history".into(),
        });
    }
    Ok(out.into_iter().map(|(_, b)| b).collect())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::Identity;
    use crate::testkit::{register, revoke, rotate};

    #[test]
    fn applies_in_order_and_tracks_history() {
        let (a, a2, b) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let mut s = DirectoryState::new();
        s.apply(0, &register("alice", "Alice AG", &a).encode_to_vec())
            .unwrap();
        s.apply(1, &register("bob", "Bob Ltd", &b).encode_to_vec())
            .unwrap();
        s.apply(2, &rotate("alice", "Alice AG", 0, &a, &a2).encode_to_vec())
            .unwrap();
        let p = s.participant("alice").unwrap();
        assert_eq!((p.current, p.history.clone()), (2, vec![0, 2]));
        assert_eq!(p.signing_key.to_bytes(), a2.signing_public());
        assert!(
            p.binding.certificate.is_empty(),
            "state keeps no certificates"
        );
        s.apply(3, &revoke("bob", "Bob Ltd", 1, &b).encode_to_vec())
            .unwrap();
        assert!(s.participant("bob").unwrap().revoked());
        assert_eq!((s.size(), s.addresses()), (4, 2));
        assert!(s.participant("carol").is_none());
        assert!(s.participant("not.an.address").is_none());
    }

    #[test]
    fn refused_entries_leave_the_state_unchanged() {
        let (a, m) = (Identity::generate(), Identity::generate());
        let mut s = DirectoryState::new();
        s.apply(0, &register("alice", "Alice AG", &a).encode_to_vec())
            .unwrap();
        let before = s.participant("alice").unwrap().clone();
        // A forged rebinding of alice to mallory's key, at the right index.
        let forged = rotate("alice", "Alice AG", 0, &m, &m).encode_to_vec();
        assert!(matches!(
            s.apply(1, &forged),
            Err(Error::SignatureInvalid(_))
        ));
        // Garbage, a gap and a replay.
        assert!(matches!(
            s.apply(1, &[0xff, 0xff]),
            Err(Error::Malformed { .. })
        ));
        let good = rotate("alice", "Alice AG", 0, &a, &m).encode_to_vec();
        assert!(matches!(
            s.apply(2, &good),
            Err(Error::OutOfOrder {
                expected: 1,
                got: 2
            })
        ));
        assert!(matches!(s.apply(0, &good), Err(Error::OutOfOrder { .. })));
        assert_eq!(s.size(), 1);
        let after = s.participant("alice").unwrap();
        assert_eq!(after.current, before.current);
        assert_eq!(after.signing_key, before.signing_key);
        // The genuine entry at that index still applies.
        s.apply(1, &good).unwrap();
        assert_eq!(
            s.participant("alice").unwrap().signing_key.to_bytes(),
            m.signing_public()
        );
    }

    #[test]
    fn histories_are_checked_as_chains() {
        let (a, a2) = (Identity::generate(), Identity::generate());
        let alice = Address::parse("alice").unwrap();
        let e0 = register("alice", "Alice AG", &a).encode_to_vec();
        let e5 = rotate("alice", "Alice AG", 0, &a, &a2).encode_to_vec();
        let e9 = revoke("alice", "Alice AG", 5, &a2).encode_to_vec();
        let h = verify_history(&alice, &[(0, &e0), (5, &e5), (9, &e9)]).unwrap();
        assert_eq!(h.len(), 3);
        assert!(h[2].revoked());
        // A missing middle entry, a reordering, another address, nothing at all.
        assert!(verify_history(&alice, &[(0, &e0), (9, &e9)]).is_err());
        assert!(verify_history(&alice, &[(5, &e5), (0, &e0)]).is_err());
        assert!(verify_history(&alice, &[(5, &e0), (5, &e5)]).is_err());
        let bob = Address::parse("bob").unwrap();
        assert!(verify_history(&bob, &[(0, &e0)]).is_err());
        assert!(verify_history(&alice, &[]).is_err());
        // A history that starts with a rotation.
        assert!(verify_history(&alice, &[(5, &e5)]).is_err());
    }
}
