//! C2SP `tlog-proof` (`c2sp.org/tlog-proof@v1`): a leaf's inclusion proof and the
//! checkpoint it leads to, in one text file, as Go's `transparency-dev/formats/proof`
//! writes and reads it:
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64>            (optional, not authenticated)
//! index <decimal>
//! <base64 SHA-256>          (the RFC 6962 inclusion path, the leaf's sibling first)
//! ...
//!                           (one empty line)
//! <the checkpoint, a signed note with every signature line, verbatim>
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::{Error, Result};

const HEADER: &str = "c2sp.org/tlog-proof@v1";

/// An inclusion proof with its checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlogProof {
    /// Opaque data for the application (not authenticated).
    pub extra: Option<Vec<u8>>,
    /// The leaf's index.
    pub index: u64,
    /// The inclusion path.
    pub hashes: Vec<[u8; 32]>,
    /// The checkpoint (signed note), verbatim.
    pub checkpoint: Vec<u8>,
}

fn bad(why: impl Into<String>) -> Error {
    Error::Malformed {
        what: "tlog-proof",
        why: why.into(),
    }
}

impl TlogProof {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("{HEADER}\n");
        if let Some(e) = &self.extra {
            s.push_str(&format!("extra {}\n", B64.encode(e)));
        }
        s.push_str(&format!("index {}\n", self.index));
        for h in &self.hashes {
            s.push_str(&B64.encode(h));
            s.push('\n');
        }
        s.push('\n');
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.checkpoint);
        out
    }

    /// Reads a file written by [`TlogProof::to_bytes`] (or any conforming writer).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let mut rest = text;
        let mut line = || -> Result<&str> {
            let (l, r) = rest.split_once('\n').ok_or_else(|| bad("ends early"))?;
            rest = r;
            Ok(l)
        };
        if line()? != HEADER {
            return Err(bad(format!("the first line is not {HEADER:?}")));
        }
        let mut l = line()?;
        let mut extra = None;
        if let Some(e) = l.strip_prefix("extra ") {
            extra = Some(B64.decode(e).map_err(|_| bad("extra is not base64"))?);
            l = line()?;
        }
        let index = l
            .strip_prefix("index ")
            .filter(|d| !d.is_empty() && (d == &"0" || !d.starts_with('0')))
            .and_then(|d| d.parse::<u64>().ok())
            .ok_or_else(|| bad(format!("expected `index N`, found {l:?}")))?;
        let mut hashes = Vec::new();
        loop {
            let l = line()?;
            if l.is_empty() {
                break;
            }
            let h = B64
                .decode(l)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| bad(format!("{l:?} is not a base64 SHA-256")))?;
            hashes.push(h);
        }
        if rest.is_empty() {
            return Err(bad("no checkpoint after the proof"));
        }
        Ok(Self {
            extra,
            index,
            hashes,
            checkpoint: rest.as_bytes().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roundtrip_and_refusals() {
        let p = TlogProof {
            extra: Some(b"x".to_vec()),
            index: 7,
            hashes: vec![[1; 32], [2; 32]],
            checkpoint: b"example.com/log\n8\nAAAA\n\n\xe2\x80\x94 example.com/log abc\n".to_vec(),
        };
        let b = p.to_bytes();
        assert!(b.starts_with(b"c2sp.org/tlog-proof@v1\nextra eA==\nindex 7\n"));
        assert_eq!(TlogProof::parse(&b).unwrap(), p);
        let none = TlogProof {
            extra: None,
            hashes: vec![],
            ..p.clone()
        };
        assert_eq!(TlogProof::parse(&none.to_bytes()).unwrap(), none);
        for bad in [
            &b"c2sp.org/tlog-proof@v2\nindex 1\n\nx"[..],
            b"c2sp.org/tlog-proof@v1\nindex 01\n\nx",
            b"c2sp.org/tlog-proof@v1\nindex 1\nAAAA\n\nx",
            b"c2sp.org/tlog-proof@v1\nindex 1\n\n",
        ] {
            assert!(TlogProof::parse(bad).is_err());
        }
    }
}
