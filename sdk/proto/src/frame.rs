//! Length-prefixed frames.
//!
//! ```text
//! frame   = len:u32be body            len = length of body, at most the receiver's maximum
//! body    = control_len:u32be control raw
//! control = a postcard-encoded Request or Response
//! raw     = record batches as bytes (produce: one batch; fetch: the batches served), or empty
//! ```
//!
//! A bidirectional QUIC stream carries request frames one way and response frames the other,
//! answered in order; a client may pipeline several requests on one stream.

use bytes::{BufMut, Bytes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ProtoError;

/// Default largest frame either side accepts: room for a 8 MiB batch plus a control message.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Encodes the body of a frame (without the outer length prefix) into `out`.
pub fn encode_body<T: Serialize>(
    control: &T,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let out_vec = std::mem::take(out);
    let mut with_control = postcard::to_extend(control, out_vec)?;
    let control_len = (with_control.len() - start - 4) as u32;
    with_control[start..start + 4].copy_from_slice(&control_len.to_be_bytes());
    with_control.extend_from_slice(raw);
    *out = with_control;
    Ok(())
}

/// Encodes a whole frame: length prefix and body.
pub fn encode_frame<T: Serialize>(control: &T, raw: &[u8]) -> Result<Vec<u8>, ProtoError> {
    let mut out = vec![0; 4];
    encode_body(control, raw, &mut out)?;
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Splits a frame body into its decoded control message and its raw bytes.
pub fn decode_body<T: DeserializeOwned>(mut body: Bytes) -> Result<(T, Bytes), ProtoError> {
    if body.len() < 4 {
        return Err(ProtoError::Malformed(
            "frame body shorter than its control length",
        ));
    }
    let control_len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if control_len > body.len() - 4 {
        return Err(ProtoError::Malformed("control length exceeds the frame"));
    }
    let _ = body.split_to(4);
    let control = body.split_to(control_len);
    let msg = postcard::from_bytes(&control)?;
    Ok((msg, body))
}

/// Reads one frame body. Returns `Ok(None)` when the stream ends cleanly between frames.
/// A frame longer than `max` is refused without reading its body.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Bytes>, ProtoError> {
    let Some(len) = read_frame_len(r).await? else {
        return Ok(None);
    };
    if len > max {
        return Err(ProtoError::FrameTooLarge { len, max });
    }
    read_frame_body(r, len).await.map(Some)
}

/// Reads a frame's 4-byte length prefix. `Ok(None)` when the stream ends cleanly before it.
pub async fn read_frame_len<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<usize>, ProtoError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ProtoError::Truncated)
            };
        }
        got += n;
    }
    Ok(Some(u32::from_be_bytes(len) as usize))
}

/// First allocation for a frame body; it doubles from there as bytes arrive.
const FIRST_BODY_CHUNK: usize = 64 * 1024;

/// Reads a frame body of `len` bytes (a length the caller has checked against its limit).
///
/// The buffer grows as the bytes arrive, never past what has arrived times two: a peer that
/// declares a large frame and then stalls pins what it sent, not what it declared.
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> Result<Bytes, ProtoError> {
    let mut body: Vec<u8> = Vec::with_capacity(len.min(FIRST_BODY_CHUNK));
    while body.len() < len {
        if body.len() == body.capacity() {
            // Exactly: the buffer never holds more than twice what arrived, nor more than `len`.
            let grow = body.len().max(FIRST_BODY_CHUNK).min(len - body.len());
            body.reserve_exact(grow);
        }
        let room = body.capacity().min(len) - body.len();
        let mut limited = (&mut body).limit(room);
        let n = r.read_buf(&mut limited).await?;
        if n == 0 {
            return Err(ProtoError::Truncated);
        }
    }
    Ok(Bytes::from(body))
}

/// The head of a frame — length prefix, control length and control message — for a body whose
/// `raw_len` raw bytes follow it.
pub fn encode_head<T: Serialize>(control: &T, raw_len: usize) -> Result<Vec<u8>, ProtoError> {
    let mut head = postcard::to_extend(control, vec![0; 8])?;
    let control_len = (head.len() - 8) as u32;
    let len = u32::try_from(head.len() - 4 + raw_len)
        .map_err(|_| ProtoError::Malformed("frame longer than 4 GiB"))?;
    head[..4].copy_from_slice(&len.to_be_bytes());
    head[4..8].copy_from_slice(&control_len.to_be_bytes());
    Ok(head)
}

/// Writes one frame. The raw bytes are written as they are, without copying them into a
/// second buffer.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    control: &T,
    raw: &[u8],
) -> Result<(), ProtoError> {
    w.write_all(&encode_head(control, raw.len())?).await?;
    if !raw.is_empty() {
        w.write_all(raw).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    #[tokio::test]
    async fn write_then_read() {
        let req = Request::DeleteTopic { name: "t".into() };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req, b"raw bytes").await.unwrap();
        assert_eq!(buf, encode_frame(&req, b"raw bytes").unwrap());
        let mut r = buf.as_slice();
        let body = read_frame(&mut r, 1024).await.unwrap().unwrap();
        let (back, raw): (Request, Bytes) = decode_body(body).unwrap();
        assert_eq!(back, req);
        assert_eq!(&raw[..], b"raw bytes");
        assert!(read_frame(&mut r, 1024).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_and_truncated() {
        let frame = encode_frame(&Request::ListTopics, &[7; 100]).unwrap();
        let mut r = frame.as_slice();
        assert!(matches!(
            read_frame(&mut r, 50).await,
            Err(ProtoError::FrameTooLarge { .. })
        ));
        let mut r = &frame[..frame.len() - 1];
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(ProtoError::Truncated)
        ));
        let mut r = &frame[..2];
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(ProtoError::Truncated)
        ));
    }

    #[tokio::test]
    async fn a_body_arriving_in_small_pieces_is_read_whole() {
        let raw: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let frame = encode_frame(&Request::ListTopics, &raw).unwrap();
        // A pipe of 1000 bytes: the body arrives in many small reads and the buffer grows.
        let (mut client, mut server) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move { client.write_all(&frame).await });
        let body = read_frame(&mut server, 2_000_000).await.unwrap().unwrap();
        writer.await.unwrap().unwrap();
        let (_, back): (Request, Bytes) = decode_body(body).unwrap();
        assert_eq!(&back[..], &raw[..]);
    }
}
