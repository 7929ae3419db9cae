//! RPCI message framing over the VMware backdoor, as pure logic over a register-exchange
//! trait so it can be tested without a hypervisor.
//!
//! The protocol (open-vm-tools `backdoor_def.h`, `guest_msg_def.h`, `message.c`): every call
//! is an `in eax, dx` on port `0x5658` with `eax` = magic `0x564D5868`, `ecx` = command `30`
//! (MESSAGE) in the low half and the message type in the high half, `edx` = port in the low
//! half and the channel id in the high half, `esi`/`edi` = the channel's cookie. A channel is
//! opened with protocol `0x49435052` ("RPCI") plus the cookie flag, a request is sent as its
//! size then 4-byte little-endian payload words, and the reply is received as its size,
//! payload words and a final status, then the channel is closed. Status bits come back in the
//! high half of `ecx`.

/// The backdoor magic in `eax`.
pub const MAGIC: u32 = 0x564D_5868;
/// The low-bandwidth backdoor I/O port.
pub const PORT: u16 = 0x5658;
/// Backdoor command MESSAGE.
pub const CMD_MESSAGE: u32 = 30;
/// Backdoor command GETVERSION (used to probe access).
pub const CMD_GETVERSION: u32 = 10;
/// The RPCI protocol number ("RPCI" little-endian).
pub const PROTO_RPCI: u32 = 0x4943_5052;
/// Ask the host for a channel cookie.
pub const FLAG_COOKIE: u32 = 0x8000_0000;

/// Message types (high half of `ecx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MsgType {
    /// Open a channel.
    Open = 0,
    /// Announce the size of a request.
    SendSize = 1,
    /// Send 4 bytes of request.
    SendPayload = 2,
    /// Ask for the size of the reply.
    RecvSize = 3,
    /// Receive 4 bytes of reply.
    RecvPayload = 4,
    /// Acknowledge the reply.
    RecvStatus = 5,
    /// Close the channel.
    Close = 6,
}

/// Status bit: the call succeeded.
pub const STATUS_SUCCESS: u32 = 0x0001;
/// Status bit: a reply is waiting to be received.
pub const STATUS_DORECV: u32 = 0x0002;
/// Status bit: the VM was checkpointed during the exchange; the message must be resent.
pub const STATUS_CPT: u32 = 0x0010;

/// The largest reply we accept (guestinfo values are at most 64 KiB; the VMX 1 MiB).
pub const MAX_REPLY: u32 = 1024 * 1024;
/// The largest request we send.
pub const MAX_REQUEST: usize = 1024 * 1024;

/// The six general registers a backdoor call reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    /// eax
    pub eax: u32,
    /// ebx
    pub ebx: u32,
    /// ecx
    pub ecx: u32,
    /// edx
    pub edx: u32,
    /// esi
    pub esi: u32,
    /// edi
    pub edi: u32,
}

/// One backdoor call: registers in, registers out.
pub trait Port {
    /// Performs the `in eax, dx`.
    fn call(&mut self, regs: Regs) -> Regs;
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RpciError {
    /// A step of the protocol did not report success.
    #[error("{step} failed (status {status:#06x})")]
    Failed {
        /// The message type that failed.
        step: &'static str,
        /// The status half of `ecx`.
        status: u32,
    },
    /// The VM was checkpointed mid-message.
    #[error("interrupted by a checkpoint during {0}")]
    Checkpoint(&'static str),
    /// The host sent something that does not follow the protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The request or the announced reply is too large.
    #[error("message of {0} bytes is too large")]
    TooLarge(usize),
}

/// Builds the registers of one MESSAGE call.
pub fn request(ty: MsgType, channel: u16, cookie: (u32, u32), ebx: u32) -> Regs {
    Regs {
        eax: MAGIC,
        ebx,
        ecx: CMD_MESSAGE | ((ty as u32) << 16),
        edx: u32::from(PORT) | (u32::from(channel) << 16),
        esi: cookie.0,
        edi: cookie.1,
    }
}

fn status(r: &Regs) -> u32 {
    r.ecx >> 16
}

fn check(step: &'static str, r: &Regs) -> Result<(), RpciError> {
    let st = status(r);
    if st & STATUS_SUCCESS != 0 {
        Ok(())
    } else if st & STATUS_CPT != 0 {
        Err(RpciError::Checkpoint(step))
    } else {
        Err(RpciError::Failed { step, status: st })
    }
}

/// An open RPCI channel.
#[derive(Debug)]
pub struct Channel {
    id: u16,
    cookie: (u32, u32),
}

impl Channel {
    /// Opens a channel.
    pub fn open(port: &mut impl Port) -> Result<Self, RpciError> {
        let out = port.call(request(MsgType::Open, 0, (0, 0), PROTO_RPCI | FLAG_COOKIE));
        check("open", &out)?;
        Ok(Self { id: (out.edx >> 16) as u16, cookie: (out.esi, out.edi) })
    }

    /// Sends one request and returns the raw reply bytes.
    pub fn send(&self, port: &mut impl Port, msg: &[u8]) -> Result<Vec<u8>, RpciError> {
        if msg.len() > MAX_REQUEST {
            return Err(RpciError::TooLarge(msg.len()));
        }
        let out = port.call(self.req(MsgType::SendSize, msg.len() as u32));
        check("send size", &out)?;
        for chunk in msg.chunks(4) {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            let out = port.call(self.req(MsgType::SendPayload, u32::from_le_bytes(word)));
            check("send payload", &out)?;
        }
        let out = port.call(self.req(MsgType::RecvSize, 0));
        check("receive size", &out)?;
        if status(&out) & STATUS_DORECV == 0 {
            return Ok(Vec::new());
        }
        if out.edx >> 16 != MsgType::SendSize as u32 {
            return Err(RpciError::Protocol("reply size has the wrong type"));
        }
        let size = out.ebx;
        if size > MAX_REPLY {
            return Err(RpciError::TooLarge(size as usize));
        }
        let mut reply = Vec::with_capacity(size as usize);
        while reply.len() < size as usize {
            let out = port.call(self.req(MsgType::RecvPayload, STATUS_SUCCESS));
            check("receive payload", &out)?;
            if out.edx >> 16 != MsgType::SendPayload as u32 {
                return Err(RpciError::Protocol("reply payload has the wrong type"));
            }
            let take = (size as usize - reply.len()).min(4);
            reply.extend_from_slice(&out.ebx.to_le_bytes()[..take]);
        }
        let out = port.call(self.req(MsgType::RecvStatus, STATUS_SUCCESS));
        check("receive status", &out)?;
        Ok(reply)
    }

    /// Closes the channel.
    pub fn close(self, port: &mut impl Port) -> Result<(), RpciError> {
        let out = port.call(self.req(MsgType::Close, 0));
        check("close", &out)
    }

    fn req(&self, ty: MsgType, ebx: u32) -> Regs {
        request(ty, self.id, self.cookie, ebx)
    }
}

/// Opens a channel, sends `msg`, closes the channel (also on error) and splits the reply
/// into its success flag and text: RPCI replies are `"1 <value>"` or `"0 <error>"`.
pub fn rpc(port: &mut impl Port, msg: &[u8]) -> Result<(bool, Vec<u8>), RpciError> {
    let chan = Channel::open(port)?;
    let result = chan.send(port, msg);
    let closed = chan.close(port);
    let reply = result?;
    closed?;
    match reply.split_first() {
        Some((b'1', rest)) => Ok((true, strip_space(rest).to_vec())),
        Some((b'0', rest)) => Ok((false, strip_space(rest).to_vec())),
        _ => Err(RpciError::Protocol("reply does not start with 0 or 1")),
    }
}

fn strip_space(b: &[u8]) -> &[u8] {
    b.strip_prefix(b" ").unwrap_or(b)
}

/// The request line for reading a key (`key` without the `guestinfo.` prefix).
pub fn info_get(key: &str) -> Vec<u8> {
    format!("info-get guestinfo.{key}").into_bytes()
}

/// The request line for writing a key.
pub fn info_set(key: &str, value: &str) -> Vec<u8> {
    format!("info-set guestinfo.{key} {value}").into_bytes()
}

/// The host's reply to `info-get` for a key that is not set.
pub const NO_VALUE: &[u8] = b"No value found";

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays a transcript: asserts each call's input and returns the recorded output.
    struct Replay(Vec<(Regs, Regs)>, usize);
    impl Port for Replay {
        fn call(&mut self, regs: Regs) -> Regs {
            let (want, out) = self.0[self.1];
            assert_eq!(regs, want, "call {}", self.1);
            self.1 += 1;
            out
        }
    }

    fn r(eax: u32, ebx: u32, ecx: u32, edx: u32, esi: u32, edi: u32) -> Regs {
        Regs { eax, ebx, ecx, edx, esi, edi }
    }

    /// The exchange for `info-get guestinfo.a` answered with `1 b`, written out register by
    /// register from the protocol (channel 3, cookie 0x1111/0x2222).
    #[test]
    fn transcript_info_get() {
        let (m, p) = (MAGIC, 0x5658);
        let ch = 3u32 << 16;
        let msg = b"info-get guestinfo.a"; // 20 bytes = 5 words
        let mut t = vec![
            (r(m, 0xC943_5052, 0x0000_001E, p, 0, 0), r(0, 0, 0x0001_0000, ch | p, 0x1111, 0x2222)),
            (
                r(m, 20, 0x0001_001E, ch | p, 0x1111, 0x2222),
                r(0, 0, 0x0081_0000, 0, 0x1111, 0x2222),
            ),
        ];
        for w in msg.chunks(4) {
            let word = u32::from_le_bytes(w.try_into().unwrap());
            t.push((
                r(m, word, 0x0002_001E, ch | p, 0x1111, 0x2222),
                r(0, 0, 0x0001_0000, 0, 0x1111, 0x2222),
            ));
        }
        t.extend([
            (
                r(m, 0, 0x0003_001E, ch | p, 0x1111, 0x2222),
                r(0, 3, 0x0083_0000, 1 << 16, 0x1111, 0x2222),
            ),
            (
                r(m, 1, 0x0004_001E, ch | p, 0x1111, 0x2222),
                r(0, u32::from_le_bytes(*b"1 b\0"), 0x0001_0000, 2 << 16, 0, 0),
            ),
            (r(m, 1, 0x0005_001E, ch | p, 0x1111, 0x2222), r(0, 0, 0x0001_0000, 0, 0, 0)),
            (r(m, 0, 0x0006_001E, ch | p, 0x1111, 0x2222), r(0, 0, 0x0001_0000, 0, 0, 0)),
        ]);
        let n = t.len();
        let mut port = Replay(t, 0);
        let (ok, val) = rpc(&mut port, &info_get("a")).unwrap();
        assert!(ok);
        assert_eq!(val, b"b");
        assert_eq!(port.1, n, "every recorded call was made");
    }

    #[test]
    fn failed_open_is_reported() {
        let mut port = Replay(
            vec![(
                request(MsgType::Open, 0, (0, 0), PROTO_RPCI | FLAG_COOKIE),
                r(0, 0, 0, 0, 0, 0),
            )],
            0,
        );
        assert_eq!(
            rpc(&mut port, b"x").unwrap_err(),
            RpciError::Failed { step: "open", status: 0 }
        );
    }
}
