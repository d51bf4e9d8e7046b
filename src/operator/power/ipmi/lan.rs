//! An IPMI 2.0 client over LAN (RMCP+, the `lanplus` interface of ipmitool), written for the
//! few commands the `ipmi` driver sends: Get Chassis Status, Chassis Control, DCMI Get Power
//! Reading, with Set Session Privilege Level and Close Session around them.
//!
//! Session setup is the IPMI 2.0 specification's (section 13.14-13.31): Open Session, then
//! RAKP 1-4, which prove to each side that the other knows the user's password without sending
//! it, and derive the session integrity key (SIK) from the password or, when the BMC has one,
//! its Kg key. Every message of the session is then authenticated (HMAC-SHA1-96 or
//! HMAC-SHA256-128 with K1) and encrypted (AES-CBC-128 with the first 16 bytes of K2). The
//! cipher suites are 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128), 17 (RAKP-HMAC-SHA256,
//! HMAC-SHA256-128, AES-CBC-128) and 0 (no authentication, integrity or encryption: anyone
//! on the LAN can send commands; only when the owner allows it).
//!
//! Everything read from the network is checked before it is used: short or malformed
//! datagrams, answers to another request and answers that fail the integrity check are
//! dropped, never a panic.
use std::net::SocketAddr;
use std::time::Duration;

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// RMCP header: version 6, reserved, sequence 0xff (no RMCP ACK), class IPMI.
const RMCP_HEADER: [u8; 4] = [0x06, 0x00, 0xff, 0x07];
/// Session header authentication type of RMCP+.
const AUTH_RMCP_PLUS: u8 = 0x06;

const PAYLOAD_IPMI: u8 = 0x00;
const PAYLOAD_OPEN_SESSION_REQUEST: u8 = 0x10;
const PAYLOAD_OPEN_SESSION_RESPONSE: u8 = 0x11;
const PAYLOAD_RAKP1: u8 = 0x12;
const PAYLOAD_RAKP2: u8 = 0x13;
const PAYLOAD_RAKP3: u8 = 0x14;
const PAYLOAD_RAKP4: u8 = 0x15;
const PAYLOAD_ENCRYPTED: u8 = 0x80;
const PAYLOAD_AUTHENTICATED: u8 = 0x40;

const BMC_ADDRESS: u8 = 0x20;
/// Software ID of a remote console (the requester address in IPMI messages).
const CONSOLE_SWID: u8 = 0x81;

/// How long one datagram is waited for before it is sent again, at most.
const RETRANSMIT: Duration = Duration::from_millis(1000);

/// The longest user name and password (or Kg) IPMI 2.0 allows; keys are zero-padded to it.
const KEY_LEN: usize = 20;
const MAX_USERNAME: usize = 16;

/// A privilege level of the session (the numbers of Set Session Privilege Level, IPMI 2.0 section
/// 22.18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    User = 2,
    Operator = 3,
    Administrator = 4,
}

/// The algorithms of one cipher suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CipherSuite {
    pub id: u8,
    auth: Hash,
    integrity: Option<Hash>,
    encrypted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    fn algorithm(self) -> hmac::Algorithm {
        match self {
            Hash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => hmac::HMAC_SHA256,
        }
    }

    fn len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha256 => 32,
        }
    }

    fn mac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let key = hmac::Key::new(self.algorithm(), key);
        let mut cx = hmac::Context::with_key(&key);
        for p in parts {
            cx.update(p);
        }
        cx.sign().as_ref().to_vec()
    }
}

impl CipherSuite {
    /// The suites this client speaks: 0, 3 and 17.
    pub fn by_id(id: u8) -> Option<CipherSuite> {
        match id {
            0 => Some(CipherSuite {
                id,
                auth: Hash::Sha1,
                integrity: None,
                encrypted: false,
            }),
            3 => Some(CipherSuite {
                id,
                auth: Hash::Sha1,
                integrity: Some(Hash::Sha1),
                encrypted: true,
            }),
            17 => Some(CipherSuite {
                id,
                auth: Hash::Sha256,
                integrity: Some(Hash::Sha256),
                encrypted: true,
            }),
            _ => None,
        }
    }

    fn none(&self) -> bool {
        self.id == 0
    }

    /// Algorithm numbers of the Open Session request (authentication, integrity,
    /// confidentiality).
    fn numbers(&self) -> [u8; 3] {
        if self.none() {
            return [0, 0, 0];
        }
        let auth = match self.auth {
            Hash::Sha1 => 0x01,
            Hash::Sha256 => 0x03,
        };
        let integrity = match self.integrity {
            None => 0x00,
            Some(Hash::Sha1) => 0x01,
            Some(Hash::Sha256) => 0x04,
        };
        [auth, integrity, u8::from(self.encrypted)]
    }

    /// Length of the integrity code at the end of each session message (12 for
    /// HMAC-SHA1-96, 16 for HMAC-SHA256-128).
    fn integrity_len(&self) -> usize {
        match self.integrity {
            None => 0,
            Some(Hash::Sha1) => 12,
            Some(Hash::Sha256) => 16,
        }
    }

    /// Length of RAKP 4's integrity check value.
    fn rakp4_len(&self) -> usize {
        match self.auth {
            _ if self.none() => 0,
            Hash::Sha1 => 12,
            Hash::Sha256 => 16,
        }
    }
}

/// What went wrong talking to the BMC. Never holds a secret: messages are built from the host,
/// status codes and lengths only.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LanError {
    /// Nothing (usable) came back within the timeout, after retransmissions.
    #[error("no answer within {timeout:?} ({what})")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    /// The socket could not be opened or the address resolved.
    #[error("{0}")]
    Network(String),
    /// The BMC refused the user, password, Kg key or privilege.
    #[error("{0}")]
    Credentials(String),
    /// The BMC does not offer what was asked (cipher suite, privilege) or answered a command
    /// with an error completion code.
    #[error("{0}")]
    Refused(String),
}

/// The answer of one IPMI command: its completion code and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub completion: u8,
    pub data: Vec<u8>,
}

/// Settings of one session.
pub struct Settings<'a> {
    pub address: SocketAddr,
    pub username: &'a str,
    pub password: &'a str,
    /// The BMC key (Kg); `None`: the password is used in its place (most boards' default).
    pub kg: Option<&'a [u8]>,
    pub privilege: Privilege,
    pub suite: CipherSuite,
    /// How long one exchange (a request and its answer, with retransmissions) may take.
    pub timeout: Duration,
}

/// An open RMCP+ session.
pub struct Session {
    sock: UdpSocket,
    suite: CipherSuite,
    timeout: Duration,
    /// The BMC's session ID (put in every message we send).
    bmc_id: u32,
    /// Our session ID (the BMC puts it in its answers).
    console_id: u32,
    k1: Vec<u8>,
    aes_key: [u8; 16],
    /// Our next session sequence number.
    seq: u32,
    rq_seq: u8,
    rng: SystemRandom,
}

fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], LanError> {
    let mut b = [0u8; N];
    rng.fill(&mut b)
        .map_err(|_| LanError::Network("no random numbers from the system".to_owned()))?;
    Ok(b)
}

fn padded_key(v: &[u8]) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    let n = v.len().min(KEY_LEN);
    k[..n].copy_from_slice(&v[..n]);
    k
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// An RMCP+ packet without a session (Open Session and RAKP messages).
fn sessionless(payload_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + payload.len());
    p.extend_from_slice(&RMCP_HEADER);
    p.push(AUTH_RMCP_PLUS);
    p.push(payload_type);
    p.extend_from_slice(&[0; 8]); // session ID 0, sequence 0
    p.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    p.extend_from_slice(payload);
    p
}

/// The payload type and payload of an RMCP+ datagram, with its session ID, before any
/// integrity check.
struct Datagram<'a> {
    payload_type: u8,
    session_id: u32,
    /// The payload (its length from the session header).
    payload: &'a [u8],
    /// The whole datagram, RMCP header to integrity code.
    whole: &'a [u8],
    /// Offset in `whole` of the first byte after the payload.
    payload_end: usize,
}

fn parse(d: &[u8]) -> Option<Datagram<'_>> {
    if d.get(..4)? != RMCP_HEADER || *d.get(4)? != AUTH_RMCP_PLUS {
        return None;
    }
    let payload_type = *d.get(5)?;
    let session_id = le32(d, 6)?;
    let len = usize::from(u16::from_le_bytes([*d.get(14)?, *d.get(15)?]));
    let payload = d.get(16..16 + len)?;
    Some(Datagram {
        payload_type,
        session_id,
        payload,
        whole: d,
        payload_end: 16 + len,
    })
}

/// Whether `d` answers our session setup message: its payload type, and our session ID, or a
/// refusal too short to carry one (ipmi_sim answers an unknown algorithm with tag and status
/// only).
fn ours(d: &Datagram<'_>, payload_type: u8, console_id: u32) -> bool {
    d.payload_type & 0x3f == payload_type
        && match le32(d.payload, 4) {
            Some(id) => id == console_id,
            None => d.payload.get(1).is_some_and(|status| *status != 0),
        }
}

/// The two's complement checksum of IPMI messages.
fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x)).wrapping_neg()
}

/// Status codes of Open Session and RAKP answers (IPMI 2.0 table 13-15), in words.
fn rakp_status(code: u8) -> &'static str {
    match code {
        0x01 => "insufficient resources to create a session",
        0x02 => "invalid session ID",
        0x03 => "invalid payload type",
        0x04 => "invalid authentication algorithm",
        0x05 => "invalid integrity algorithm",
        0x06 => "no matching authentication payload",
        0x07 => "no matching integrity payload",
        0x08 => "inactive session ID",
        0x09 => "invalid role",
        0x0a => "unauthorized role or privilege level requested",
        0x0b => "insufficient resources to create a session at the requested role",
        0x0c => "invalid name length",
        0x0d => "unauthorized name",
        0x0e => "unauthorized GUID",
        0x0f => "invalid integrity check value",
        0x10 => "invalid confidentiality algorithm",
        0x11 => "no cipher suite match with proposed security algorithms",
        0x12 => "illegal or unrecognized parameter",
        _ => "unknown status",
    }
}

impl Session {
    /// Opens a session: Open Session, RAKP 1-4, then Set Session Privilege Level.
    pub async fn open(s: &Settings<'_>) -> Result<Session, LanError> {
        let bind: SocketAddr = if s.address.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(|e| LanError::Network(format!("cannot open a UDP socket: {e}")))?;
        sock.connect(s.address)
            .await
            .map_err(|e| LanError::Network(format!("cannot reach {}: {e}", s.address)))?;
        let rng = SystemRandom::new();
        let username = s.username.as_bytes();
        if username.len() > MAX_USERNAME {
            return Err(LanError::Credentials(format!(
                "the user name is {} bytes long; IPMI allows at most {MAX_USERNAME}",
                username.len()
            )));
        }
        let console_id = u32::from_le_bytes(random::<4>(&rng)?) | 1;
        let suite = s.suite;
        let mut session = Session {
            sock,
            suite,
            timeout: s.timeout,
            bmc_id: 0,
            console_id,
            k1: Vec::new(),
            aes_key: [0; 16],
            seq: 1,
            rq_seq: 0,
            rng,
        };

        // Open Session.
        let [auth, integrity, conf] = suite.numbers();
        let mut open = vec![0x00, s.privilege as u8, 0, 0];
        open.extend_from_slice(&console_id.to_le_bytes());
        open.extend_from_slice(&[0x00, 0, 0, 0x08, auth, 0, 0, 0]);
        open.extend_from_slice(&[0x01, 0, 0, 0x08, integrity, 0, 0, 0]);
        open.extend_from_slice(&[0x02, 0, 0, 0x08, conf, 0, 0, 0]);
        let request = sessionless(PAYLOAD_OPEN_SESSION_REQUEST, &open);
        let answer = session
            .exchange(&request, "Open Session", |d| {
                ours(d, PAYLOAD_OPEN_SESSION_RESPONSE, console_id).then(|| d.payload.to_vec())
            })
            .await?;
        let status = answer.get(1).copied().unwrap_or(0xff);
        if status != 0 {
            return Err(match status {
                0x04..=0x07 | 0x10 | 0x11 => LanError::Refused(format!(
                    "the BMC does not offer cipher suite {} ({}); most boards offer 3 and 17",
                    suite.id,
                    rakp_status(status)
                )),
                0x09 | 0x0a => LanError::Credentials(format!(
                    "the BMC refused the privilege level {:?} ({})",
                    s.privilege,
                    rakp_status(status)
                )),
                _ => LanError::Refused(format!(
                    "the BMC refused to open a session: {} (status {status:#04x})",
                    rakp_status(status)
                )),
            });
        }
        let bmc_id = le32(&answer, 8).ok_or_else(|| {
            LanError::Refused("the BMC's Open Session answer is too short".into())
        })?;
        let offered = [answer.get(16), answer.get(24), answer.get(32)];
        if offered != [Some(&auth), Some(&integrity), Some(&conf)] {
            return Err(LanError::Refused(format!(
                "the BMC answered cipher suite {} with other algorithms",
                suite.id
            )));
        }
        session.bmc_id = bmc_id;

        // RAKP 1 and 2.
        let rm = random::<16>(&session.rng)?;
        // Name-only lookup (bit 4) with the requested privilege, as ipmitool sends it.
        let role = 0x10 | s.privilege as u8;
        let mut rakp1 = vec![0x00, 0, 0, 0];
        rakp1.extend_from_slice(&bmc_id.to_le_bytes());
        rakp1.extend_from_slice(&rm);
        rakp1.extend_from_slice(&[role, 0, 0, username.len() as u8]);
        rakp1.extend_from_slice(username);
        let request = sessionless(PAYLOAD_RAKP1, &rakp1);
        let rakp2 = session
            .exchange(&request, "RAKP 1", |d| {
                ours(d, PAYLOAD_RAKP2, console_id).then(|| d.payload.to_vec())
            })
            .await?;
        let status = rakp2.get(1).copied().unwrap_or(0xff);
        if status == 0x09 || status == 0x0a {
            return Err(LanError::Credentials(format!(
                "the BMC refused privilege level {:?} for the user: {} (RAKP 2 status \
                 {status:#04x}); give the user that privilege on the LAN channel",
                s.privilege,
                rakp_status(status)
            )));
        }
        if status != 0 {
            return Err(LanError::Credentials(format!(
                "the BMC refused the user: {} (RAKP 2 status {status:#04x}); check the user \
                 name, that the user is enabled for LAN access, and its privilege",
                rakp_status(status)
            )));
        }
        let (Some(rc), Some(guid)) = (rakp2.get(8..24), rakp2.get(24..40)) else {
            return Err(LanError::Refused(
                "the BMC's RAKP 2 message is too short".into(),
            ));
        };
        let kuid = padded_key(s.password.as_bytes());
        let ulen = [username.len() as u8];
        if !suite.none() {
            let expected = suite.auth.mac(
                &kuid,
                &[
                    &console_id.to_le_bytes(),
                    &bmc_id.to_le_bytes(),
                    &rm,
                    rc,
                    guid,
                    &[role],
                    &ulen,
                    username,
                ],
            );
            let got = rakp2.get(40..40 + suite.auth.len());
            if got.is_none_or(|g| !constant_time_eq(g, &expected)) {
                // Tell the BMC, so it drops the half-open session at once.
                let mut rakp3 = vec![0x00, 0x0f, 0, 0];
                rakp3.extend_from_slice(&bmc_id.to_le_bytes());
                let _ = session.sock.send(&sessionless(PAYLOAD_RAKP3, &rakp3)).await;
                return Err(LanError::Credentials(
                    "the BMC does not know this password for the user (its RAKP 2 code does \
                     not match): check the password"
                        .to_owned(),
                ));
            }
        }

        // RAKP 3 and 4, and the session keys.
        let mut rakp3 = vec![0x00, 0x00, 0, 0];
        rakp3.extend_from_slice(&bmc_id.to_le_bytes());
        if !suite.none() {
            rakp3.extend_from_slice(&suite.auth.mac(
                &kuid,
                &[rc, &console_id.to_le_bytes(), &[role], &ulen, username],
            ));
        }
        let kg = s.kg.map(padded_key).unwrap_or(kuid);
        let sik = suite.auth.mac(&kg, &[&rm, rc, &[role], &ulen, username]);
        let request = sessionless(PAYLOAD_RAKP3, &rakp3);
        let rakp4 = session
            .exchange(&request, "RAKP 3", |d| {
                ours(d, PAYLOAD_RAKP4, console_id).then(|| d.payload.to_vec())
            })
            .await?;
        let status = rakp4.get(1).copied().unwrap_or(0xff);
        if status != 0 {
            return Err(LanError::Credentials(format!(
                "the BMC refused the session: {} (RAKP 4 status {status:#04x}); check the \
                 password{}",
                rakp_status(status),
                if s.kg.is_some() {
                    " and the Kg key"
                } else {
                    ", and whether the BMC has a Kg key (then set key kg in the Secret)"
                }
            )));
        }
        if !suite.none() {
            let expected = suite.auth.mac(&sik, &[&rm, &bmc_id.to_le_bytes(), guid]);
            let n = suite.rakp4_len();
            let got = rakp4.get(8..8 + n);
            if got.is_none_or(|g| !constant_time_eq(g, &expected[..n])) {
                return Err(LanError::Credentials(
                    "the BMC's session keys do not match ours (RAKP 4 check value): check the \
                     Kg key (key kg of the Secret) against the BMC's"
                        .to_owned(),
                ));
            }
            session.k1 = suite.auth.mac(&sik, &[&[0x01; KEY_LEN]]);
            let k2 = suite.auth.mac(&sik, &[&[0x02; KEY_LEN]]);
            session.aes_key.copy_from_slice(&k2[..16]);
        }

        // The session starts at User level; raise it to the one asked for.
        let r = session.command(0x06, 0x3b, &[s.privilege as u8]).await?;
        if r.completion != 0 {
            let _ = session.close().await;
            return Err(LanError::Credentials(format!(
                "the BMC refused privilege level {:?} for this user (completion code {:#04x}); \
                 give the user that privilege on the LAN channel",
                s.privilege, r.completion
            )));
        }
        Ok(session)
    }

    /// Sends the session setup message `request` until an answer `accept` takes arrives,
    /// resending it every [`RETRANSMIT`] (a lost datagram in either direction), for at most the
    /// timeout. Other datagrams (late answers to an earlier resend, junk) are dropped.
    async fn exchange<T>(
        &self,
        request: &[u8],
        what: &'static str,
        mut accept: impl FnMut(&Datagram<'_>) -> Option<T>,
    ) -> Result<T, LanError> {
        let deadline = Instant::now() + self.timeout;
        let every = RETRANSMIT
            .min(self.timeout / 3)
            .max(Duration::from_millis(50));
        let mut buf = vec![0u8; 1024];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(LanError::Timeout {
                    what,
                    timeout: self.timeout,
                });
            }
            // A refused datagram (nothing listens yet) is an error here on some systems:
            // it counts as a lost one.
            let _ = self.sock.send(request).await;
            let resend_at = (now + every).min(deadline);
            loop {
                let n = match tokio::time::timeout_at(resend_at, self.sock.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(Err(_)) => {
                        // ICMP port unreachable: wait out this round, then send again.
                        tokio::time::sleep_until(resend_at).await;
                        break;
                    }
                    Ok(Ok(n)) => n,
                };
                if let Some(d) = buf.get(..n).and_then(parse)
                    && let Some(t) = accept(&d)
                {
                    return Ok(t);
                }
            }
        }
    }

    /// Sends one IPMI command (`netfn`, `cmd`, `data`) in the session and returns its answer.
    /// Resent with a new sequence number when lost: the commands the driver sends can be
    /// carried out twice without harm (a second power-on or -off of a chassis in that state).
    pub async fn command(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Result<Response, LanError> {
        self.rq_seq = (self.rq_seq + 1) & 0x3f;
        let rq_seq = self.rq_seq;
        let mut msg = vec![BMC_ADDRESS, netfn << 2];
        msg.push(checksum(&msg));
        let start = msg.len();
        msg.extend_from_slice(&[CONSOLE_SWID, rq_seq << 2, cmd]);
        msg.extend_from_slice(data);
        let sum = checksum(&msg[start..]);
        msg.push(sum);

        let deadline = Instant::now() + self.timeout;
        let every = RETRANSMIT
            .min(self.timeout / 3)
            .max(Duration::from_millis(50));
        let mut buf = vec![0u8; 1024];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(LanError::Timeout {
                    what: "IPMI command",
                    timeout: self.timeout,
                });
            }
            let packet = self.seal(&msg)?;
            let _ = self.sock.send(&packet).await;
            let resend_at = (now + every).min(deadline);
            loop {
                let n = match tokio::time::timeout_at(resend_at, self.sock.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(Err(_)) => {
                        tokio::time::sleep_until(resend_at).await;
                        break;
                    }
                    Ok(Ok(n)) => n,
                };
                let Some(plain) = buf.get(..n).and_then(|d| self.open_message(d)) else {
                    continue;
                };
                // rqAddr, netFn/rqLUN, checksum, rsAddr, rqSeq/rsLUN, cmd, completion, data,
                // checksum.
                if plain.len() < 8
                    || plain[1] >> 2 != netfn | 1
                    || plain[4] >> 2 != rq_seq
                    || plain[5] != cmd
                {
                    continue;
                }
                return Ok(Response {
                    completion: plain[6],
                    data: plain[7..plain.len() - 1].to_vec(),
                });
            }
        }
    }

    /// A session message carrying the IPMI message `msg`.
    fn seal(&mut self, msg: &[u8]) -> Result<Vec<u8>, LanError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1).max(1);
        let payload = if self.suite.encrypted {
            let iv = random::<16>(&self.rng)?;
            let mut body = msg.to_vec();
            let pad = (16 - (body.len() + 1) % 16) % 16;
            body.extend((1..=pad).map(|i| i as u8));
            body.push(pad as u8);
            let len = body.len();
            let enc = cbc::Encryptor::<aes::Aes128>::new(&self.aes_key.into(), &iv.into())
                .encrypt_padded_mut::<NoPadding>(&mut body, len)
                .map_err(|_| LanError::Network("cannot encrypt the message".to_owned()))?
                .to_vec();
            let mut p = iv.to_vec();
            p.extend_from_slice(&enc);
            p
        } else {
            msg.to_vec()
        };
        let mut ptype = PAYLOAD_IPMI;
        if self.suite.encrypted {
            ptype |= PAYLOAD_ENCRYPTED;
        }
        if self.suite.integrity.is_some() {
            ptype |= PAYLOAD_AUTHENTICATED;
        }
        let mut p = Vec::with_capacity(32 + payload.len());
        p.extend_from_slice(&RMCP_HEADER);
        p.push(AUTH_RMCP_PLUS);
        p.push(ptype);
        p.extend_from_slice(&self.bmc_id.to_le_bytes());
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        p.extend_from_slice(&payload);
        if let Some(h) = self.suite.integrity {
            // Integrity pad: from the authentication type through the next header byte is a
            // multiple of 4 bytes.
            let covered = p.len() - 4 + 2;
            let pad = (4 - covered % 4) % 4;
            p.extend(std::iter::repeat_n(0xff, pad));
            p.push(pad as u8);
            p.push(0x07);
            let code = h.mac(&self.k1, &[&p[4..]]);
            p.extend_from_slice(&code[..self.suite.integrity_len()]);
        }
        Ok(p)
    }

    /// The IPMI message of a datagram of this session, after its integrity check and
    /// decryption; `None` for anything else.
    fn open_message(&self, d: &[u8]) -> Option<Vec<u8>> {
        let dg = parse(d)?;
        if dg.payload_type & 0x3f != PAYLOAD_IPMI || dg.session_id != self.console_id {
            return None;
        }
        if let Some(h) = self.suite.integrity {
            if dg.payload_type & PAYLOAD_AUTHENTICATED == 0 {
                return None;
            }
            let n = self.suite.integrity_len();
            let end = dg.whole.len().checked_sub(n)?;
            if end < dg.payload_end + 2 {
                return None;
            }
            let code = h.mac(&self.k1, &[dg.whole.get(4..end)?]);
            if !constant_time_eq(&code[..n], dg.whole.get(end..)?) {
                return None;
            }
        }
        if !self.suite.encrypted {
            return Some(dg.payload.to_vec());
        }
        if dg.payload_type & PAYLOAD_ENCRYPTED == 0 || dg.payload.len() < 32 {
            return None;
        }
        let (iv, body) = dg.payload.split_at(16);
        if body.len() % 16 != 0 {
            return None;
        }
        let mut body = body.to_vec();
        let iv: [u8; 16] = iv.try_into().ok()?;
        let plain = cbc::Decryptor::<aes::Aes128>::new(&self.aes_key.into(), &iv.into())
            .decrypt_padded_mut::<NoPadding>(&mut body)
            .ok()?;
        let pad = usize::from(*plain.last()?);
        let len = plain.len().checked_sub(pad + 1)?;
        Some(plain[..len].to_vec())
    }

    /// Closes the session, so it does not hold one of the BMC's few session slots until the
    /// BMC times it out. Best effort: one datagram, a short wait for the answer.
    pub async fn close(&mut self) -> Result<(), LanError> {
        let id = self.bmc_id.to_le_bytes();
        let timeout = self.timeout;
        self.timeout = timeout.min(Duration::from_millis(500));
        let r = self.command(0x06, 0x3c, &id).await.map(|_| ());
        self.timeout = timeout;
        r
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_datagrams_are_dropped_not_read_past_their_end() {
        assert!(parse(&[]).is_none());
        assert!(parse(&[0x06, 0x00, 0xff, 0x07, 0x06]).is_none());
        // A payload length beyond the datagram.
        let mut d = sessionless(PAYLOAD_RAKP2, &[0; 4]);
        d[14] = 0xff;
        assert!(parse(&d).is_none());
        let ok = sessionless(PAYLOAD_RAKP2, &[1, 2, 3]);
        assert_eq!(parse(&ok).map(|d| d.payload.to_vec()), Some(vec![1, 2, 3]));
    }

    #[test]
    fn sealed_messages_open_with_the_same_keys_for_suites_3_and_17() {
        for id in [3, 17, 0] {
            let suite = CipherSuite::by_id(id).unwrap();
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_nonblocking(true).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut s = Session {
                    sock: UdpSocket::from_std(sock).unwrap(),
                    suite,
                    timeout: Duration::from_secs(1),
                    bmc_id: 7,
                    console_id: 7,
                    k1: vec![9; suite.auth.len()],
                    aes_key: [5; 16],
                    seq: 1,
                    rq_seq: 0,
                    rng: SystemRandom::new(),
                };
                for len in [0usize, 1, 14, 15, 16, 31] {
                    let msg: Vec<u8> = (0..len as u8).collect();
                    let sealed = s.seal(&msg).unwrap();
                    assert_eq!(s.open_message(&sealed), Some(msg.clone()), "suite {id}");
                    if suite.integrity.is_some() {
                        let mut bad = sealed.clone();
                        let last = bad.len() - 1;
                        bad[last] ^= 1;
                        assert_eq!(s.open_message(&bad), None, "suite {id}");
                        // The integrity pad makes the covered part a multiple of 4.
                        let covered = sealed.len() - 4 - suite.integrity_len();
                        assert_eq!(covered % 4, 0);
                    }
                }
            });
        }
    }

    /// A BMC (or anything at its address) that answers with junk or with a truncated Open
    /// Session answer gets an error, never a panic: junk is ignored until the timeout, a
    /// truncated answer is refused.
    #[tokio::test]
    async fn junk_and_truncated_answers_are_errors_not_panics() {
        let bmc = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = bmc.local_addr().unwrap();
        let truncated = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mode = truncated.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = bmc.recv_from(&mut buf).await {
                let answer = if mode.load(std::sync::atomic::Ordering::SeqCst) && n >= 28 {
                    // Tag, status 0, privilege, reserved, our session ID, a BMC session ID,
                    // and no algorithms.
                    let mut p = vec![0, 0, 3, 0];
                    p.extend_from_slice(&buf[20..24]);
                    p.extend_from_slice(&[9, 9, 9, 9]);
                    sessionless(PAYLOAD_OPEN_SESSION_RESPONSE, &p)
                } else {
                    vec![0x06, 0x00, 0xff, 0x07, 0x06, 0x11, 1, 2, 3]
                };
                let _ = bmc.send_to(&answer, from).await;
            }
        });
        let settings = |timeout| Settings {
            address,
            username: "u",
            password: "p",
            kg: None,
            privilege: Privilege::Operator,
            suite: CipherSuite::by_id(3).unwrap(),
            timeout,
        };
        let junk = Session::open(&settings(Duration::from_millis(300))).await;
        assert!(
            matches!(junk, Err(LanError::Timeout { .. })),
            "{:?}",
            junk.err()
        );
        truncated.store(true, std::sync::atomic::Ordering::SeqCst);
        let short = Session::open(&settings(Duration::from_secs(2))).await;
        assert!(
            matches!(short, Err(LanError::Refused(_))),
            "{:?}",
            short.err()
        );
    }

    #[test]
    fn only_suites_0_3_and_17_are_spoken() {
        assert_eq!(CipherSuite::by_id(3).map(|s| s.numbers()), Some([1, 1, 1]));
        assert_eq!(CipherSuite::by_id(17).map(|s| s.numbers()), Some([3, 4, 1]));
        assert_eq!(CipherSuite::by_id(0).map(|s| s.numbers()), Some([0, 0, 0]));
        assert!(CipherSuite::by_id(1).is_none());
    }
}
