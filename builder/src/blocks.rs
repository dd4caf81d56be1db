//! Reading the blocks stream by sequence: what the builder's standbys, the benches and the
//! tests share. Whole blocks come out of it; parts are joined ([`wire::BlockParts`]), and
//! what comes out is still to be verified by the reader.

use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageError, Stream};
use blockpost_core::wire;

/// Reads message `seq` of a blocks stream into `parts`: the block, when the message is
/// one or completes one; `None` for a part that does not, or a message that is gone.
pub async fn read_block_message(
    stream: &Stream,
    seq: u64,
    parts: &mut wire::BlockParts,
) -> Result<Option<Vec<u8>>, RawMessageError> {
    let m = match stream.get_raw_message(seq).await {
        Ok(m) => m,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let part = m
        .headers
        .get(wire::BLOCK_PART_HEADER)
        .map(|v| v.as_str().to_owned());
    Ok(parts.push(part.as_deref(), &m.payload))
}
