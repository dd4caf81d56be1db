//! The NATS wire contract, in one place: stream names, subjects, headers and
//! de-duplication ids. Publishers, readers and tests all use these, so that none can drift.
//!
//! Every name is in the namespace of one directory log ([`Namespace`], from its origin), so
//! several nodes with their own logs can share one NATS server without a word crossing over.
//! With `T` the namespace token:
//!
//! | stream | subjects | message | headers |
//! |---|---|---|---|
//! | `BLOCKPOST_T_DIRECTORY` | `blockpost.T.directory.entry` | a `LogEntry` | [`LEAF_INDEX_HEADER`], [`TREE_SIZE_HEADER`] and [`PROOF_HEADER`] (its inclusion proof in a checkpoint published before it), `Nats-Msg-Id` = [`entry_msg_id`] |
//! | | `blockpost.T.directory.checkpoint` | a signed checkpoint note | [`TREE_SIZE_HEADER`], `Nats-Msg-Id` = [`checkpoint_msg_id`] |
//! | `BLOCKPOST_T_FIREHOSE` (one partition) or `BLOCKPOST_T_FIREHOSE_K_OF_P` (partition `K` of `P`, [`Firehose`]) | `blockpost.T.firehose` or `blockpost.T.firehose.P.K` | an `Envelope` | [`MESSAGE_ID_HEADER`], [`GATEWAY_MAC_HEADER`], `Nats-Msg-Id` = [`nonce_msg_id`] |
//! | `BLOCKPOST_T_INBOX` | `blockpost.T.inbox.<address>` | nothing: a pointer to the firehose | [`MESSAGE_ID_HEADER`], [`FIREHOSE_SEQ_HEADER`], [`FIREHOSE_PARTITION_HEADER`] (absent: 0), `Nats-Msg-Id` = [`inbox_msg_id`] |
//!
//! Each stream's description is [`Namespace::description`]: a node refuses to use a stream
//! whose description names another log.

use sha2::Digest as _;

use crate::Address;

/// Bytes a message on the bus keeps, within the server's `max_payload`, for its NATS
/// headers (ids, sequences, tags, parts).
pub const HEADER_ROOM: usize = 1024;

/// Largest block, in bytes, whatever the bus carries in one message: a larger block is
/// never laid out ([`crate::transaction::BlockBudget::capacity`]).
pub const MAX_BLOCK_LEN: usize = 64 << 20;

/// The largest part of a block in one message of a NATS server whose `max_payload` is
/// given. A block longer than that travels in parts ([`BLOCK_PART_HEADER`]).
pub fn block_part_len(max_payload: usize) -> usize {
    max_payload.saturating_sub(HEADER_ROOM).max(1)
}

/// The largest envelope a gateway may accept on a NATS server whose `max_payload` is given:
/// it fits in one firehose message, and in a block of at most [`MAX_BLOCK_LEN`] together
/// with the closing record it may bring and that block's time-out closings at their worst
/// ([`crate::transaction::BlockBudget::max_message_len`]). A gateway that accepted more
/// would receipt a message no block can carry.
pub fn max_envelope_len(max_payload: usize) -> usize {
    let budget = crate::transaction::BlockBudget {
        capacity: MAX_BLOCK_LEN,
        ..crate::transaction::BlockBudget::UNLIMITED
    };
    max_payload
        .saturating_sub(HEADER_ROOM)
        .min(budget.max_message_len())
}

/// A part of a block that travels in parts: `HEIGHT K N`, the block's height, the part's
/// number (1 to N) and the number of parts. Parts are published in order, each with
/// `Nats-Msg-Id` = [`block_part_msg_id`]; a reader joins parts 1 to N of one height
/// ([`BlockParts`]). A block that fits in one message travels whole, without this header.
pub const BLOCK_PART_HEADER: &str = "Blockpost-Block-Part";

/// The value of [`BLOCK_PART_HEADER`].
pub fn block_part(height: u64, part: usize, parts: usize) -> String {
    format!("{height} {part} {parts}")
}

/// Reads a [`BLOCK_PART_HEADER`] value: height, part, parts (1 <= part <= parts).
pub fn parse_block_part(value: &str) -> Option<(u64, usize, usize)> {
    let mut it = value.split(' ');
    let height = it.next()?.parse().ok()?;
    let part: usize = it.next()?.parse().ok()?;
    let parts: usize = it.next()?.parse().ok()?;
    (it.next().is_none() && part >= 1 && part <= parts).then_some((height, part, parts))
}

/// De-duplication id of part `part` of `parts` of the block at `height` (a block cut into
/// another number of parts, on a bus that carries another size, has other ids).
pub fn block_part_msg_id(height: u64, part: usize, parts: usize) -> String {
    format!("block-{height}-part-{part}-of-{parts}")
}

/// Joins the parts of blocks read from the blocks stream, in stream order: each message
/// goes in with its [`BLOCK_PART_HEADER`] value (`None` for a block that travels whole),
/// and a whole block comes out once every part 1 to N of one height is in. A part of
/// another height or number of parts starts over; a part that comes again (a republish)
/// takes its place. What it holds never exceeds [`MAX_BLOCK_LEN`]. The block that comes out
/// is checked like any other (its signature and root): joining wrong parts gives a block
/// that fails, never a forgery.
#[derive(Debug, Default)]
pub struct BlockParts {
    /// The block being joined: height, its parts so far (by number), their bytes.
    joining: Option<(u64, Vec<Part>, usize)>,
}

/// One part of a block being joined, once read.
type Part = Option<Vec<u8>>;

impl BlockParts {
    /// Takes one message of the blocks stream: the whole block when it is one or completes
    /// one.
    pub fn push(&mut self, part: Option<&str>, payload: &[u8]) -> Option<Vec<u8>> {
        let Some(part) = part else {
            self.joining = None;
            return Some(payload.to_vec());
        };
        let Some((height, k, n)) = parse_block_part(part) else {
            self.joining = None;
            return None;
        };
        if n > MAX_BLOCK_LEN {
            self.joining = None;
            return None;
        }
        let fresh =
            !matches!(&self.joining, Some((h, slots, _)) if *h == height && slots.len() == n);
        if fresh {
            self.joining = Some((height, vec![None; n], 0));
        }
        let (_, slots, held) = self.joining.as_mut()?;
        let before = slots[k - 1].as_ref().map_or(0, Vec::len);
        if *held - before + payload.len() > MAX_BLOCK_LEN {
            self.joining = None;
            return None;
        }
        *held = *held - before + payload.len();
        slots[k - 1] = Some(payload.to_vec());
        if slots.iter().any(Option::is_none) {
            return None;
        }
        let (_, slots, _) = self.joining.take()?;
        Some(slots.into_iter().flatten().flatten().collect())
    }

    /// Whether a block is being joined (some of its parts were read, not all).
    pub fn joining(&self) -> bool {
        self.joining.is_some()
    }
}

/// The names of one directory log's streams and subjects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    origin: String,
    token: String,
}

impl Namespace {
    /// The namespace of the log with this origin: its token is the first 12 hex digits of
    /// SHA-256(origin), one NATS subject token that any origin maps to.
    pub fn for_origin(origin: &str) -> Self {
        let h = sha2::Sha256::digest(origin.as_bytes());
        Self {
            origin: origin.to_owned(),
            token: hex::encode(&h[..6]),
        }
    }

    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The token in every subject and stream name.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// What every stream of this log says it holds.
    pub fn description(&self) -> String {
        format!("blockpost log {}", self.origin)
    }

    fn stream(&self, what: &str) -> String {
        format!("BLOCKPOST_{}_{what}", self.token.to_ascii_uppercase())
    }

    /// The directory's stream.
    pub fn directory_stream(&self) -> String {
        self.stream("DIRECTORY")
    }

    /// The firehose stream of a one-partition firehose ([`Firehose::stream`] in general).
    pub fn firehose_stream(&self) -> String {
        self.stream("FIREHOSE")
    }

    /// The firehose of `partitions` partitions ([`Firehose`]).
    pub fn firehose(&self, partitions: u32) -> Firehose {
        Firehose {
            ns: self.clone(),
            partitions: partitions.clamp(1, MAX_FIREHOSE_PARTITIONS),
        }
    }

    /// The inbox stream.
    pub fn inbox_stream(&self) -> String {
        self.stream("INBOX")
    }

    /// Subjects of the directory stream.
    pub fn directory_subjects(&self) -> String {
        format!("blockpost.{}.directory.>", self.token)
    }

    /// Subject of directory log entries.
    pub fn entry_subject(&self) -> String {
        format!("blockpost.{}.directory.entry", self.token)
    }

    /// Subject of directory checkpoints.
    pub fn checkpoint_subject(&self) -> String {
        format!("blockpost.{}.directory.checkpoint", self.token)
    }

    /// Subject of a one-partition firehose: every accepted envelope, once
    /// ([`Firehose::subject`] in general).
    pub fn firehose_subject(&self) -> String {
        format!("blockpost.{}.firehose", self.token)
    }

    /// The stream of blocks the builder cut.
    pub fn blocks_stream(&self) -> String {
        self.stream("BLOCKS")
    }

    /// The stream whose one message says which builder cuts blocks (its lease): a
    /// key-value bucket of one key, as JetStream makes them.
    pub fn lease_stream(&self) -> String {
        self.stream("LEASE")
    }

    /// `blockpost.T.lease.builder`: the builder lease.
    pub fn builder_lease_subject(&self) -> String {
        format!("blockpost.{}.lease.builder", self.token)
    }

    /// `blockpost.T.blocks`: every block (a `Block`), in height order.
    pub fn blocks_subject(&self) -> String {
        format!("blockpost.{}.blocks", self.token)
    }

    /// Subjects of the inbox stream.
    pub fn inbox_subjects(&self) -> String {
        format!("blockpost.{}.inbox.*", self.token)
    }

    /// The subject of `address`'s inbox; an [`Address`] is always one subject token.
    pub fn inbox_subject(&self, address: &Address) -> String {
        format!("blockpost.{}.inbox.{address}", self.token)
    }
}

/// Most partitions a firehose may have.
pub const MAX_FIREHOSE_PARTITIONS: u32 = 256;

/// The firehose of one log: `P` partitions, one JetStream stream each, so that each has
/// its own leader (and its own servers, in a cluster). A sender's envelopes all go to one
/// partition ([`Firehose::partition_of`]), so order per sender is kept. `P` is fixed when
/// the firehose is made: it is in every partition's stream name and subject, so that a
/// node started with another `P` finds streams that are not its own
/// ([`Firehose::partitions_of_stream`]) instead of forking the log. With `P` = 1 the names
/// are those of a firehose made before partitions existed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firehose {
    ns: Namespace,
    partitions: u32,
}

impl Firehose {
    /// How many partitions (1 to [`MAX_FIREHOSE_PARTITIONS`]).
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of envelopes from `sender`: the first 8 bytes of
    /// SHA-256(`"blockpost/v1 partition\n"` || address), big-endian, modulo `P`.
    pub fn partition_of(&self, sender: &Address) -> u32 {
        partition_of(sender, self.partitions)
    }

    /// The stream of partition `k`: `BLOCKPOST_T_FIREHOSE` when `P` = 1, else
    /// `BLOCKPOST_T_FIREHOSE_K_OF_P`.
    pub fn stream(&self, k: u32) -> String {
        if self.partitions == 1 {
            self.ns.firehose_stream()
        } else {
            format!("{}_{k}_OF_{}", self.ns.firehose_stream(), self.partitions)
        }
    }

    /// The subject of partition `k`: `blockpost.T.firehose` when `P` = 1, else
    /// `blockpost.T.firehose.P.K`.
    pub fn subject(&self, k: u32) -> String {
        if self.partitions == 1 {
            self.ns.firehose_subject()
        } else {
            format!("{}.{}.{k}", self.ns.firehose_subject(), self.partitions)
        }
    }

    /// Every partition: `0..P`.
    pub fn all(&self) -> std::ops::Range<u32> {
        0..self.partitions
    }

    /// For a stream name of this log's firehose, the number of partitions of the firehose
    /// it belongs to (whichever `P` made it); `None` for any other stream.
    pub fn partitions_of_stream(&self, name: &str) -> Option<u32> {
        let base = self.ns.firehose_stream();
        let rest = name.strip_prefix(base.as_str())?;
        if rest.is_empty() {
            return Some(1);
        }
        let (k, p) = rest.strip_prefix('_')?.split_once("_OF_")?;
        let (k, p): (u32, u32) = (k.parse().ok()?, p.parse().ok()?);
        (k < p).then_some(p)
    }
}

/// The partition of envelopes from `sender` on a firehose of `partitions` partitions
/// ([`Firehose::partition_of`]).
pub fn partition_of(sender: &Address, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let mut h = sha2::Sha256::new();
    h.update(b"blockpost/v1 partition\n");
    h.update(sender.as_str().as_bytes());
    let d = h.finalize();
    let mut first = [0; 8];
    first.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(first) % u64::from(partitions)) as u32
}

/// JetStream's de-duplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Leaf index of a directory entry message.
pub const LEAF_INDEX_HEADER: &str = "Blockpost-Leaf-Index";
/// Tree size of a checkpoint message, and of the checkpoint an entry's proof is for.
pub const TREE_SIZE_HEADER: &str = "Blockpost-Tree-Size";
/// An entry's inclusion proof in the tree of [`TREE_SIZE_HEADER`] leaves:
/// [`encode_proof`].
pub const PROOF_HEADER: &str = "Blockpost-Inclusion-Proof";
/// Hex message id (SHA-256 of the encoded envelope).
pub const MESSAGE_ID_HEADER: &str = "Blockpost-Message-Id";
/// Firehose sequence of an inbox entry.
pub const FIREHOSE_SEQ_HEADER: &str = "Blockpost-Firehose-Seq";
/// Firehose partition of an inbox entry (absent: partition 0).
pub const FIREHOSE_PARTITION_HEADER: &str = "Blockpost-Firehose-Partition";
/// The gateway's [`FirehoseMac`] tag of a firehose envelope, hex.
pub const GATEWAY_MAC_HEADER: &str = "Blockpost-Gateway-Mac";

/// Tags the gateway puts on each firehose envelope it checked: HMAC-SHA256 (RFC 2104) over
/// the envelope's bytes, under a key derived with HKDF-SHA256 (RFC 5869) from the gateway's
/// signing key. The node's block builder holds the same key: a tag that verifies tells it
/// that its own gateway checked the sender's signature, so it need not check it again,
/// while an envelope published on the firehose by anyone else (no tag, or a wrong one) is
/// checked in full. A node-internal shortcut, not evidence: nobody outside the node can
/// check a tag, and an auditor checks every signature itself.
#[derive(Clone)]
pub struct FirehoseMac(ring::hmac::Key);

impl std::fmt::Debug for FirehoseMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FirehoseMac(..)")
    }
}

/// What the gateway's firehose tags are bound to besides the envelope.
const FIREHOSE_MAC_CONTEXT: &[u8] = b"blockpost/v1 firehose mac\n";

impl FirehoseMac {
    /// The key of the gateway whose signing key is `gateway_key`.
    pub fn derive(gateway_key: &ed25519_dalek::SigningKey) -> Self {
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"blockpost/v1")
            .extract(gateway_key.as_bytes());
        let info = [FIREHOSE_MAC_CONTEXT];
        // 32 bytes out of HKDF-SHA256 cannot fail (the limit is 255 hash lengths).
        let key = prk
            .expand(&info, ring::hmac::HMAC_SHA256)
            .map(ring::hmac::Key::from)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[]));
        Self(key)
    }

    /// The tag of an envelope (its encoded bytes), as a header value.
    pub fn tag(&self, envelope: &[u8]) -> String {
        let mut c = ring::hmac::Context::with_key(&self.0);
        c.update(FIREHOSE_MAC_CONTEXT);
        c.update(envelope);
        hex::encode(c.sign().as_ref())
    }

    /// Whether `tag` (a header value) is this key's tag of `envelope` (in constant time).
    pub fn check(&self, envelope: &[u8], tag: &str) -> bool {
        let Ok(raw) = hex::decode(tag) else {
            return false;
        };
        let mut m = Vec::with_capacity(FIREHOSE_MAC_CONTEXT.len() + envelope.len());
        m.extend_from_slice(FIREHOSE_MAC_CONTEXT);
        m.extend_from_slice(envelope);
        ring::hmac::verify(&self.0, &m, &raw).is_ok()
    }
}

/// An inclusion proof as a header value: the hashes in order, concatenated, base64.
pub fn encode_proof(hashes: &[[u8; 32]]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(hashes.concat())
}

/// The hashes of a proof header; `None` when it is not whole 32-byte hashes in base64.
pub fn decode_proof(value: &str) -> Option<Vec<[u8; 32]>> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value)
        .ok()?;
    if raw.len() % 32 != 0 || raw.len() > 64 * 32 {
        return None;
    }
    raw.chunks(32).map(|c| c.try_into().ok()).collect()
}

/// De-duplication id of directory entry `index`.
pub fn entry_msg_id(index: u64) -> String {
    format!("entry-{index}")
}

/// De-duplication id of the block at `height`.
pub fn block_msg_id(height: u64) -> String {
    format!("block-{height}")
}

/// De-duplication id of the checkpoint of `size` entries.
pub fn checkpoint_msg_id(size: u64) -> String {
    format!("checkpoint-{size}")
}

/// De-duplication id of a firehose message: a sender's nonce is accepted once.
pub fn nonce_msg_id(sender: &Address, nonce: u64) -> String {
    format!("nonce:{sender}:{nonce}")
}

/// De-duplication id of one recipient's inbox copy.
pub fn inbox_msg_id(message_id_hex: &str, recipient: &Address) -> String {
    format!("{message_id_hex}:{recipient}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_separate_logs() {
        let a = Namespace::for_origin("bank.example/log");
        let b = Namespace::for_origin("other.example/log");
        assert_ne!(a.token(), b.token());
        assert_eq!(a, Namespace::for_origin("bank.example/log"));
        assert_eq!(a.token().len(), 12);
        assert!(
            a.entry_subject()
                .starts_with(&format!("blockpost.{}.", a.token()))
        );
        assert!(a.directory_stream().starts_with("BLOCKPOST_"));
        assert!(a.directory_stream().ends_with("_DIRECTORY"));
        assert!(
            !a.directory_stream()
                .chars()
                .any(|c| c == '.' || c == '*' || c == '>')
        );
        let alice = Address::parse("alice").unwrap();
        assert_ne!(a.inbox_subject(&alice), b.inbox_subject(&alice));
    }

    #[test]
    fn firehose_partitions_are_named_with_their_count_and_keep_a_sender_in_one() {
        let ns = Namespace::for_origin("bank.example/log");
        let one = ns.firehose(1);
        assert_eq!(one.stream(0), ns.firehose_stream());
        assert_eq!(one.subject(0), ns.firehose_subject());
        let alice = Address::parse("alice").unwrap();
        assert_eq!(one.partition_of(&alice), 0);
        let four = ns.firehose(4);
        assert_eq!(four.stream(2), format!("{}_2_OF_4", ns.firehose_stream()));
        assert_eq!(four.subject(3), format!("{}.4.3", ns.firehose_subject()));
        assert_eq!(four.partitions_of_stream(&four.stream(3)), Some(4));
        assert_eq!(four.partitions_of_stream(&one.stream(0)), Some(1));
        assert_eq!(
            four.partitions_of_stream(&ns.firehose(8).stream(7)),
            Some(8)
        );
        assert_eq!(four.partitions_of_stream(&ns.inbox_stream()), None);
        assert_eq!(
            four.partitions_of_stream(&format!("{}_4_OF_4", ns.firehose_stream())),
            None
        );
        // Stable: the same sender, the same partition, every time and everywhere.
        let p = four.partition_of(&alice);
        assert_eq!(p, partition_of(&alice, 4));
        assert!(p < 4);
        // Every partition gets senders.
        let mut hit = [0usize; 4];
        for i in 0..400 {
            let a = Address::parse(&format!("sender{i}")).unwrap();
            hit[four.partition_of(&a) as usize] += 1;
        }
        assert!(hit.iter().all(|&n| n > 50), "{hit:?}");
        assert_eq!(ns.firehose(0).partitions(), 1);
        assert_eq!(ns.firehose(100_000).partitions(), MAX_FIREHOSE_PARTITIONS);
    }

    #[test]
    fn firehose_tags_bind_key_and_bytes() {
        let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mac = FirehoseMac::derive(&k);
        let tag = mac.tag(b"envelope");
        assert_eq!(tag.len(), 64);
        assert!(mac.check(b"envelope", &tag));
        assert!(!mac.check(b"envelopf", &tag));
        assert!(!mac.check(b"envelope", &tag[..62]));
        assert!(!mac.check(b"envelope", "not hex"));
        // Deterministic per key, different across keys.
        assert_eq!(FirehoseMac::derive(&k).tag(b"envelope"), tag);
        let other = FirehoseMac::derive(&ed25519_dalek::SigningKey::from_bytes(&[8; 32]));
        assert!(!other.check(b"envelope", &tag));
    }

    #[test]
    fn block_parts_join_by_number_and_start_over_for_another_block() {
        let mut p = BlockParts::default();
        assert_eq!(p.push(None, b"whole"), Some(b"whole".to_vec()));
        assert_eq!(p.push(Some(&block_part(7, 1, 3)), b"ab"), None);
        assert!(p.joining());
        assert_eq!(p.push(Some(&block_part(7, 2, 3)), b"cd"), None);
        assert_eq!(
            p.push(Some(&block_part(7, 3, 3)), b"e"),
            Some(b"abcde".to_vec())
        );
        assert!(!p.joining());
        // A part of another block starts over; the first one's parts are dropped.
        assert_eq!(p.push(Some(&block_part(8, 1, 2)), b"x"), None);
        assert_eq!(p.push(Some(&block_part(9, 2, 2)), b"y"), None);
        assert_eq!(p.push(Some(&block_part(8, 2, 2)), b"y"), None);
        assert_eq!(
            p.push(Some(&block_part(8, 1, 2)), b"x"),
            Some(b"xy".to_vec())
        );
        // A republish that the de-duplication window cut in half: [1][2][1'][3'].
        assert_eq!(p.push(Some(&block_part(10, 1, 3)), b"a"), None);
        assert_eq!(p.push(Some(&block_part(10, 2, 3)), b"b"), None);
        assert_eq!(p.push(Some(&block_part(10, 1, 3)), b"a"), None);
        assert_eq!(
            p.push(Some(&block_part(10, 3, 3)), b"c"),
            Some(b"abc".to_vec())
        );
        // The same block cut into another number of parts starts over.
        assert_eq!(p.push(Some(&block_part(11, 1, 3)), b"a"), None);
        assert_eq!(p.push(Some(&block_part(11, 1, 2)), b"ab"), None);
        assert_eq!(
            p.push(Some(&block_part(11, 2, 2)), b"c"),
            Some(b"abc".to_vec())
        );
        // A bad header drops what was being joined.
        assert_eq!(p.push(Some(&block_part(12, 1, 2)), b"a"), None);
        assert_eq!(p.push(Some("12 3 2"), b"a"), None);
        assert!(!p.joining());
        for bad in ["", "1 2", "1 0 1", "1 3 2", "1 1 1 1", "a 1 1"] {
            assert_eq!(parse_block_part(bad), None, "{bad:?}");
        }
        assert_ne!(block_part_msg_id(5, 1, 2), block_part_msg_id(5, 1, 3));
        assert_eq!(max_envelope_len(8 << 20), (8 << 20) - HEADER_ROOM);
        assert_eq!(max_envelope_len(1 << 20), (1 << 20) - HEADER_ROOM);
    }
}
