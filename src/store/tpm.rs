//! `tpm` seals the 32 secret bytes of a file share to this host's TPM 2.0,
//! so that a copy of the disk (share directory and database) rebuilds
//! nothing: the sealed blob loads only under the storage root key of the
//! TPM it was made on, and only while that TPM's owner hierarchy is not
//! cleared.
//!
//! Only with the `tpm2` cargo feature (it links the C TSS, Debian package
//! `libtss2-dev`). Without it [`Tpm`] still exists, and every call returns
//! [`TpmError::NotBuilt`].
//!
//! # What is done on the TPM
//!
//! Each call opens the TPM (a TCTI string: `device:/dev/tpmrm0`,
//! `swtpm:host=127.0.0.1,port=2321`, `mssim:…`, `tabrmd:…`), re-creates the
//! storage root key (SRK) and flushes every object it loaded before closing
//! again: a bare simulator serves one connection at a time, and no
//! persistent handle is used (they collide with other software).
//!
//! The SRK is the TCG standard ECC NIST P-256 storage key (TCG "TPM 2.0
//! Provisioning Guidance" §7.5.1, which is the EK Credential Profile's
//! template L-2 with `userWithAuth|noDA` and no policy): owner hierarchy,
//! nameAlg SHA-256, `fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|
//! noDA|restricted|decrypt`, AES-128-CFB, scheme and KDF null, unique x and
//! y 32 zero bytes each. It is derived from the owner seed, so it is the
//! same key on every call until the TPM is cleared, and it is the SRK that
//! `systemd-cryptenroll`, go-tpm and `tpm2_createprimary -C o -G ecc256`
//! (with those attributes and unique) make. ECC rather than RSA-2048: both
//! are mandatory in the PC Client profile, and an ECC primary key is
//! derived in milliseconds where an RSA one takes a prime search.
//!
//! The secret is a sealed data object (keyedhash, scheme null) under the
//! SRK: nameAlg SHA-256, `fixedTPM|fixedParent|userWithAuth|noDA`, empty
//! auth value, no policy (so no PCR binding: see below).
//!
//! # Blob
//!
//! ```text
//!   "STPM" 0x01                  magic and version
//!   u16 BE n, n bytes            TPM2B_PUBLIC  (TPMT_PUBLIC of the sealed object)
//!   u16 BE m, m bytes            TPM2B_PRIVATE (the TPM's encrypted, HMACed sensitive part)
//! ```
//!
//! Nothing follows. After the 5-byte header the two parts are in the TPM's
//! own wire format (what `tpm2_create -u/-r` writes). Parsing is bounded
//! (it reads a file an attacker may control): both lengths are checked
//! against the TPM's maximum sizes and the bytes left, the public part must
//! be exactly the sealed-object shape above and marshal back to the same
//! bytes, and only then is anything sent to the TPM.
//!
//! # What it protects against, and what not
//!
//! Without a PCR policy or an auth value, any process that can open the TPM
//! on the running host unseals the blob: the protection is against a copy
//! of the disk, not against root on the host. The secret crosses the bus to
//! the TPM in clear (a password session, no parameter encryption).

use std::fmt;
#[cfg(feature = "tpm2")]
use std::io;

use zeroize::Zeroizing;

/// What [`Tpm::seal`] made: the blob to store, and the Name of the SRK it
/// is sealed to (nameAlg ‖ SHA-256 of its public area, 34 bytes), to
/// record beside it.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub blob: Vec<u8>,
    pub srk_name: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("blob_len", &self.blob.len())
            .field("srk_name", &hex(&self.srk_name))
            .finish()
    }
}

/// Lowercase hex, for names in messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a TPM call failed, in words for the operator.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error(
        "this splitsign was built without TPM support: build with \
         `cargo build --release --features tpm2` (needs libtss2-dev)"
    )]
    NotBuilt,
    #[error(
        "invalid TPM TCTI {tcti:?}: expected e.g. \"device:/dev/tpmrm0\" or \"swtpm:host=127.0.0.1,port=2321\""
    )]
    BadTcti { tcti: String },
    #[error("TPM not reachable at {tcti:?}: {cause}{hint}")]
    Unreachable {
        tcti: String,
        /// The OS error when one could be found (opening the device,
        /// connecting to the simulator), else the TSS's.
        cause: String,
        /// What to do about it, starting with "; " (or empty).
        hint: String,
    },
    #[error("sealed TPM blob is malformed: {0}")]
    Malformed(String),
    #[error(
        "the TPM refused the sealed share ({detail}): it was sealed to another TPM, or this \
         TPM was cleared since (a new owner seed), or the blob was altered"
    )]
    NotSealedHere { detail: String },
    /// The blob records another SRK than this TPM's (found before the TPM
    /// is asked to load it).
    #[error("the sealed share is sealed to another TPM (this TPM's storage root key differs)")]
    SealedElsewhere { here: Vec<u8> },
    #[error("the TPM at {tcti:?} failed to {what}: {detail}")]
    Tpm {
        tcti: String,
        what: &'static str,
        detail: String,
    },
}

/// Where the TPM is: a TCTI string, e.g. `device:/dev/tpmrm0` or
/// `swtpm:host=127.0.0.1,port=2321`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tpm {
    tcti: String,
}

impl Tpm {
    pub fn new(tcti: &str) -> Tpm {
        Tpm {
            tcti: tcti.to_owned(),
        }
    }

    /// The TCTI string this TPM is reached by.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Seal 32 secret bytes under this TPM's SRK (see the module doc).
    pub fn seal(&self, secret: &[u8; 32]) -> Result<Sealed, TpmError> {
        #[cfg(feature = "tpm2")]
        {
            imp::seal(&self.tcti, secret)
        }
        #[cfg(not(feature = "tpm2"))]
        {
            let _ = secret;
            Err(TpmError::NotBuilt)
        }
    }

    /// Re-create the SRK, load the blob under it, unseal, flush everything.
    pub fn unseal(&self, blob: &[u8]) -> Result<Zeroizing<[u8; 32]>, TpmError> {
        self.unseal_expecting(blob, None)
    }

    /// [`Tpm::unseal`], refusing with [`TpmError::SealedElsewhere`] (and
    /// this TPM's SRK Name) when the SRK is not the one `sealed_to` names:
    /// one connection and one SRK for the check and the unseal.
    pub fn unseal_sealed_to(
        &self,
        blob: &[u8],
        sealed_to: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, TpmError> {
        self.unseal_expecting(blob, Some(sealed_to))
    }

    fn unseal_expecting(
        &self,
        blob: &[u8],
        sealed_to: Option<&[u8]>,
    ) -> Result<Zeroizing<[u8; 32]>, TpmError> {
        #[cfg(feature = "tpm2")]
        {
            imp::unseal(&self.tcti, blob, sealed_to)
        }
        #[cfg(not(feature = "tpm2"))]
        {
            let _ = (blob, sealed_to);
            Err(TpmError::NotBuilt)
        }
    }

    /// The SRK Name of this TPM: compare it with the one recorded at
    /// sealing before unsealing, to name the cause of a refusal.
    pub fn srk_name(&self) -> Result<Vec<u8>, TpmError> {
        #[cfg(feature = "tpm2")]
        {
            imp::srk_name(&self.tcti)
        }
        #[cfg(not(feature = "tpm2"))]
        {
            Err(TpmError::NotBuilt)
        }
    }
}

/// Blob magic and version.
const MAGIC: &[u8; 5] = b"STPM\x01";

/// The two parts of a blob, bounded by `max_public` and `max_private`.
/// Pure (no TPM), so it is tested in every build.
#[cfg_attr(not(feature = "tpm2"), allow(dead_code))]
fn split_blob(
    blob: &[u8],
    max_public: usize,
    max_private: usize,
) -> Result<(&[u8], &[u8]), TpmError> {
    let bad = |m: String| Err(TpmError::Malformed(m));
    let Some(rest) = blob.strip_prefix(&MAGIC[..]) else {
        return bad(format!(
            "it does not start with the splitsign TPM blob header (STPM version 1); \
             {} bytes",
            blob.len()
        ));
    };
    let (public, rest) = take_tpm2b(rest, "public part", max_public)?;
    let (private, rest) = take_tpm2b(rest, "private part", max_private)?;
    if !rest.is_empty() {
        return bad(format!(
            "{} unexpected bytes after the private part",
            rest.len()
        ));
    }
    Ok((public, private))
}

/// One TPM2B: a big-endian u16 length, then that many bytes (1..=max).
fn take_tpm2b<'a>(
    bytes: &'a [u8],
    what: &str,
    max: usize,
) -> Result<(&'a [u8], &'a [u8]), TpmError> {
    let Some((len, rest)) = bytes.split_first_chunk::<2>() else {
        return Err(TpmError::Malformed(format!(
            "truncated: no length for the {what}"
        )));
    };
    let len = usize::from(u16::from_be_bytes(*len));
    if len == 0 || len > max {
        return Err(TpmError::Malformed(format!(
            "the {what} is {len} bytes (expected 1 to {max})"
        )));
    }
    if len > rest.len() {
        return Err(TpmError::Malformed(format!(
            "truncated: the {what} is {len} bytes but only {} follow",
            rest.len()
        )));
    }
    Ok(rest.split_at(len))
}

/// `MAGIC ‖ u16 ‖ public ‖ u16 ‖ private`.
#[cfg_attr(not(feature = "tpm2"), allow(dead_code))]
fn join_blob(public: &[u8], private: &[u8]) -> Option<Vec<u8>> {
    let pl = u16::try_from(public.len()).ok()?;
    let rl = u16::try_from(private.len()).ok()?;
    let mut blob = Vec::with_capacity(MAGIC.len() + 4 + public.len() + private.len());
    blob.extend_from_slice(MAGIC);
    blob.extend_from_slice(&pl.to_be_bytes());
    blob.extend_from_slice(public);
    blob.extend_from_slice(&rl.to_be_bytes());
    blob.extend_from_slice(private);
    Some(blob)
}

/// Where a TCTI string points, to find the OS error behind a failed open.
#[cfg(feature = "tpm2")]
enum Target {
    Device(String),
    Net(String, u16),
    Other,
}

#[cfg(feature = "tpm2")]
fn target(tcti: &str) -> Target {
    let (name, conf) = tcti.split_once(':').unwrap_or((tcti, ""));
    match name {
        // The TSS's default device (tss-esapi's, too) is /dev/tpm0.
        "device" if conf.is_empty() => Target::Device("/dev/tpm0".into()),
        "device" => Target::Device(conf.into()),
        "swtpm" | "mssim" => {
            let mut host = "localhost".to_owned();
            let mut port = 2321u16;
            for kv in conf.split(',') {
                match kv.split_once('=') {
                    Some(("host", h)) => host = h.to_owned(),
                    Some(("port", p)) => port = p.parse().unwrap_or(port),
                    _ => {}
                }
            }
            Target::Net(host, port)
        }
        _ => Target::Other,
    }
}

/// The OS error behind a TPM that could not be opened, and a hint.
#[cfg(feature = "tpm2")]
fn diagnose(tcti: &str, tss: &str) -> TpmError {
    let unreachable = |cause: String, hint: &str| TpmError::Unreachable {
        tcti: tcti.to_owned(),
        cause,
        hint: hint.to_owned(),
    };
    match target(tcti) {
        Target::Device(path) => {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            {
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => unreachable(
                    format!("opening {path}: {e}"),
                    "; is the user in group tss? (/dev/tpmrm0 is root:tss 0660 on Debian)",
                ),
                Err(e) if e.kind() == io::ErrorKind::NotFound => unreachable(
                    format!("opening {path}: {e}"),
                    "; does this host have a TPM 2.0, enabled in the firmware? \
                     (use /dev/tpmrm0, the kernel's resource manager)",
                ),
                Err(e) => unreachable(format!("opening {path}: {e}"), ""),
                Ok(_) => unreachable(
                    format!("{path} opens, but the TSS failed: {tss}"),
                    "; is it a TPM 2.0 (not 1.2), and not held by another process \
                     (use /dev/tpmrm0 rather than /dev/tpm0)?",
                ),
            }
        }
        Target::Net(host, port) => {
            use std::net::ToSocketAddrs;
            let addrs = match (host.as_str(), port).to_socket_addrs() {
                Ok(a) => a.collect::<Vec<_>>(),
                Err(e) => return unreachable(format!("resolving {host}: {e}"), ""),
            };
            let mut last = None;
            for a in &addrs {
                match std::net::TcpStream::connect_timeout(a, std::time::Duration::from_secs(2)) {
                    Ok(_) => {
                        return unreachable(
                            format!("{host}:{port} accepts connections, but the TSS failed: {tss}"),
                            "; a bare simulator serves one connection at a time: is another \
                             process using it?",
                        );
                    }
                    Err(e) => last = Some(e),
                }
            }
            match last {
                Some(e) => unreachable(
                    format!("connecting to {host}:{port}: {e}"),
                    "; is the TPM simulator running there?",
                ),
                None => unreachable(format!("{host} has no address"), ""),
            }
        }
        Target::Other => unreachable(format!("the TSS failed: {tss}"), ""),
    }
}

#[cfg(feature = "tpm2")]
mod imp {
    use std::str::FromStr;

    use tss_esapi::Context;
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::constants::response_code::Tss2ResponseCode;
    use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
    use tss_esapi::handles::KeyHandle;
    use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::interface_types::resource_handles::Hierarchy;
    use tss_esapi::interface_types::session_handles::AuthSession;
    use tss_esapi::structures::{
        Digest, EccParameter, EccPoint, EccScheme, KeyDerivationFunctionScheme, KeyedHashScheme,
        Private, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
        SensitiveData, SymmetricDefinitionObject,
    };
    use tss_esapi::tcti_ldr::TctiNameConf;
    use tss_esapi::traits::{Marshall, UnMarshall};
    use zeroize::Zeroizing;

    use super::{Sealed, TpmError, diagnose, join_blob, split_blob};

    type Result<T> = std::result::Result<T, TpmError>;

    /// The TPM's refusal of `what`, as a [`TpmError::Tpm`].
    fn tpm_err(tcti: &str, what: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
        move |e| TpmError::Tpm {
            tcti: tcti.to_owned(),
            what,
            detail: describe(e),
        }
    }

    fn describe(e: tss_esapi::Error) -> String {
        match e {
            tss_esapi::Error::WrapperError(k) => format!("{k}"),
            tss_esapi::Error::Tss2Error(rc) => match raw_rc(rc) {
                Some(raw) if raw >> 16 == 0 => format!("{rc} (TPM response code {raw:#x})"),
                Some(raw) => format!(
                    "TSS {} layer: {} (response code {raw:#x})",
                    layer_name(raw >> 16),
                    base_rc_name(raw & 0xffff)
                ),
                None => format!("{rc:?}"),
            },
        }
    }

    /// The raw TSS2_RC: tss-esapi 7 keeps it private, but shows it in the
    /// Display of the error's source ("Response code value: 0x…").
    fn raw_rc(rc: Tss2ResponseCode) -> Option<u32> {
        let text = std::error::Error::source(&rc)?.to_string();
        let hex = text.rsplit_once("0x")?.1;
        u32::from_str_radix(hex.trim(), 16).ok()
    }

    fn layer_name(layer: u32) -> String {
        match layer {
            6 => "feature".into(),
            7 => "ESAPI".into(),
            8 => "SAPI".into(),
            9 => "marshalling".into(),
            10 => "TCTI (transport)".into(),
            11 | 12 => "resource manager".into(),
            n => format!("#{n}"),
        }
    }

    fn base_rc_name(rc: u32) -> &'static str {
        match rc {
            1 => "general failure",
            2 => "not implemented",
            3 => "bad context",
            4 => "ABI mismatch",
            6 => "insufficient buffer",
            7 => "bad sequence",
            8 => "no connection",
            9 => "try again (timed out)",
            10 => "I/O error",
            11 => "bad value",
            12 => "not permitted",
            16 => "bad size",
            17 => "malformed response",
            19 => "response too short",
            20 => "incompatible TCTI",
            21 => "not supported",
            23 => "out of memory",
            27 => "response HMAC did not verify",
            _ => "error",
        }
    }

    /// Open the TPM: one connection, closed when the context drops.
    fn open(tcti: &str) -> Result<Context> {
        refuse_verbose_tss_log()?;
        let conf = TctiNameConf::from_str(tcti).map_err(|_| TpmError::BadTcti {
            tcti: tcti.to_owned(),
        })?;
        let mut ctx = Context::new(conf).map_err(|e| diagnose(tcti, &describe(e)))?;
        // Empty owner auth, empty object auth: a password session.
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        Ok(ctx)
    }

    /// The C TSS reads `TSS2_LOG` itself: at debug or trace it hexdumps
    /// every command and response, which would put the secret being sealed
    /// or unsealed in the logs (journald, on the same disk). Refused, not
    /// obeyed.
    fn refuse_verbose_tss_log() -> Result<()> {
        let Some(v) = std::env::var_os("TSS2_LOG") else {
            return Ok(());
        };
        let v = v.to_string_lossy().to_ascii_lowercase();
        if v.contains("debug") || v.contains("trace") {
            return Err(TpmError::Tpm {
                tcti: String::new(),
                what: "be used",
                detail: format!(
                    "TSS2_LOG={v:?} makes the TSS library dump every TPM command and response, \
                     the unsealed share among them: unset it (or keep it at warning or error)"
                ),
            });
        }
        Ok(())
    }

    /// The TCG ECC P-256 SRK template (see the module doc).
    fn srk_template() -> tss_esapi::Result<Public> {
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .with_restricted(true)
            .with_decrypt(true)
            .build()?;
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_auth_policy(Digest::default())
            .with_ecc_parameters(
                PublicEccParametersBuilder::new()
                    .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
                    .with_ecc_scheme(EccScheme::Null)
                    .with_curve(EccCurve::NistP256)
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .with_is_decryption_key(true)
                    .with_restricted(true)
                    .build()?,
            )
            .with_ecc_unique_identifier(EccPoint::new(
                EccParameter::try_from(vec![0u8; 32])?,
                EccParameter::try_from(vec![0u8; 32])?,
            ))
            .build()
    }

    /// The sealed data object's attributes.
    fn sealed_attributes() -> tss_esapi::Result<tss_esapi::attributes::ObjectAttributes> {
        ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .build()
    }

    fn sealed_template() -> tss_esapi::Result<Public> {
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(sealed_attributes()?)
            .with_auth_policy(Digest::default())
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()
    }

    /// Create the SRK, run `f` with it, flush it whatever `f` returned.
    fn with_srk<T>(
        tcti: &str,
        ctx: &mut Context,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T>,
    ) -> Result<T> {
        let template = srk_template().map_err(tpm_err(tcti, "build the SRK template"))?;
        let srk = ctx
            .create_primary(Hierarchy::Owner, template, None, None, None, None)
            .map_err(tpm_err(tcti, "create the storage root key"))?
            .key_handle;
        let r = f(ctx, srk);
        flush(tcti, ctx, srk);
        r
    }

    /// Flush a transient object (a bare simulator keeps it past the
    /// connection). A failure is only logged: the result stands.
    fn flush(tcti: &str, ctx: &mut Context, handle: KeyHandle) {
        if let Err(e) = ctx.flush_context(handle.into()) {
            tracing::warn!(tcti, error = %describe(e), "flushing a TPM object failed");
        }
    }

    fn name_of(tcti: &str, ctx: &mut Context, srk: KeyHandle) -> Result<Vec<u8>> {
        Ok(ctx
            .tr_get_name(srk.into())
            .map_err(tpm_err(tcti, "read the SRK's name"))?
            .value()
            .to_vec())
    }

    pub(super) fn seal(tcti: &str, secret: &[u8; 32]) -> Result<Sealed> {
        let template = sealed_template().map_err(tpm_err(tcti, "build the sealed template"))?;
        // Zeroized on drop (tss-esapi keeps buffers in Zeroizing).
        let data =
            SensitiveData::try_from(&secret[..]).map_err(tpm_err(tcti, "take the secret"))?;
        let mut ctx = open(tcti)?;
        with_srk(tcti, &mut ctx, |ctx, srk| {
            let srk_name = name_of(tcti, ctx, srk)?;
            let created = ctx
                .create(srk, template, None, Some(data), None, None)
                .map_err(tpm_err(tcti, "create the sealed object"))?;
            let public = created
                .out_public
                .marshall()
                .map_err(tpm_err(tcti, "marshal the sealed object"))?;
            let blob = join_blob(&public, created.out_private.value()).ok_or_else(|| {
                TpmError::Malformed("the TPM returned parts longer than 65535 bytes".into())
            })?;
            Ok(Sealed { blob, srk_name })
        })
    }

    /// Parse a blob: bounded, and only the sealed-object shape we make.
    fn parse(blob: &[u8]) -> Result<(Public, Private)> {
        let (public_bytes, private_bytes) =
            split_blob(blob, Public::BUFFER_SIZE, Private::MAX_SIZE)?;
        let public = Public::unmarshall(public_bytes).map_err(|e| {
            TpmError::Malformed(format!("the public part does not parse: {}", describe(e)))
        })?;
        match &public {
            Public::KeyedHash {
                object_attributes,
                name_hashing_algorithm: HashingAlgorithm::Sha256,
                auth_policy,
                parameters,
                unique,
            } if Ok(*object_attributes) == sealed_attributes()
                && auth_policy.value().is_empty()
                && *parameters == PublicKeyedHashParameters::new(KeyedHashScheme::Null)
                && unique.value().len() == 32 => {}
            _ => {
                return Err(TpmError::Malformed(
                    "the public part is not a splitsign sealed object (keyedhash, SHA-256, \
                     fixedTPM|fixedParent|userWithAuth|noDA, no policy)"
                        .into(),
                ));
            }
        }
        // One encoding only: trailing bytes inside the TPM2B are refused.
        if public.marshall().ok().as_deref() != Some(public_bytes) {
            return Err(TpmError::Malformed(
                "the public part has bytes past its end".into(),
            ));
        }
        let private = Private::try_from(private_bytes)
            .map_err(|e| TpmError::Malformed(format!("the private part: {}", describe(e))))?;
        Ok((public, private))
    }

    pub(super) fn unseal(
        tcti: &str,
        blob: &[u8],
        sealed_to: Option<&[u8]>,
    ) -> Result<Zeroizing<[u8; 32]>> {
        let (public, private) = parse(blob)?;
        let mut ctx = open(tcti)?;
        with_srk(tcti, &mut ctx, |ctx, srk| {
            if let Some(want) = sealed_to {
                let here = name_of(tcti, ctx, srk)?;
                if here != want {
                    return Err(TpmError::SealedElsewhere { here });
                }
            }
            let object = ctx
                .load(srk, private, public)
                .map_err(|e| load_err(tcti, e))?;
            let data = ctx.unseal(object.into());
            flush(tcti, ctx, object);
            let data = data.map_err(tpm_err(tcti, "unseal the sealed object"))?;
            let bytes = data.value();
            if bytes.len() != 32 {
                return Err(TpmError::Malformed(format!(
                    "the sealed object holds {} bytes, not 32",
                    bytes.len()
                )));
            }
            let mut out = Zeroizing::new([0u8; 32]);
            out.copy_from_slice(bytes);
            Ok(out)
        })
    }

    /// The TPM's integrity check failing on load means the private part
    /// was not made under this SRK (or was altered); any other refusal of
    /// a well-formed blob is an altered blob too.
    fn load_err(tcti: &str, e: tss_esapi::Error) -> TpmError {
        match e {
            tss_esapi::Error::Tss2Error(rc @ Tss2ResponseCode::FormatOne(_))
                if raw_rc(rc).is_some_and(|r| r >> 16 == 0)
                    && rc.kind() == Some(Tss2ResponseCodeKind::Integrity) =>
            {
                TpmError::NotSealedHere {
                    detail: format!("TPM2_Load: {}", describe(e)),
                }
            }
            tss_esapi::Error::Tss2Error(
                rc @ (Tss2ResponseCode::FormatOne(_) | Tss2ResponseCode::FormatZero(_)),
            ) if raw_rc(rc).is_some_and(|r| r >> 16 == 0)
                && matches!(
                    rc.kind(),
                    Some(
                        Tss2ResponseCodeKind::Size
                            | Tss2ResponseCodeKind::Value
                            | Tss2ResponseCodeKind::Sensitive
                            | Tss2ResponseCodeKind::Binding
                            | Tss2ResponseCodeKind::Attributes
                            | Tss2ResponseCodeKind::Insufficient
                            | Tss2ResponseCodeKind::Key
                            | Tss2ResponseCodeKind::Symmetric
                            | Tss2ResponseCodeKind::Scheme
                            | Tss2ResponseCodeKind::Hash
                            | Tss2ResponseCodeKind::Type
                    )
                ) =>
            {
                TpmError::NotSealedHere {
                    detail: format!("TPM2_Load: {}", describe(e)),
                }
            }
            e => tpm_err(tcti, "load the sealed object")(e),
        }
    }

    pub(super) fn srk_name(tcti: &str) -> Result<Vec<u8>> {
        let mut ctx = open(tcti)?;
        with_srk(tcti, &mut ctx, |ctx, srk| name_of(tcti, ctx, srk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_framing_round_trips_and_is_bounded() {
        let blob = join_blob(b"pub", b"private").unwrap();
        assert_eq!(&blob[..5], MAGIC);
        assert_eq!(
            split_blob(&blob, 100, 100).unwrap(),
            (&b"pub"[..], &b"private"[..])
        );
        // Every truncation, and any trailing byte, is refused.
        for n in 0..blob.len() {
            assert!(matches!(
                split_blob(&blob[..n], 100, 100),
                Err(TpmError::Malformed(_))
            ));
        }
        let mut long = blob.clone();
        long.push(0);
        assert!(split_blob(&long, 100, 100).is_err());
        // Lengths above the bounds are refused before reading.
        assert!(split_blob(&blob, 2, 100).is_err());
        assert!(split_blob(&blob, 100, 6).is_err());
        // A huge length on a short blob.
        let mut lie = MAGIC.to_vec();
        lie.extend_from_slice(&[0xff, 0xff, 1, 2, 3]);
        assert!(split_blob(&lie, usize::MAX, usize::MAX).is_err());
    }

    #[cfg(not(feature = "tpm2"))]
    #[test]
    fn without_the_feature_every_call_is_not_built() {
        let tpm = Tpm::new("device:/dev/tpmrm0");
        assert!(matches!(tpm.seal(&[7; 32]), Err(TpmError::NotBuilt)));
        assert!(matches!(tpm.unseal(b"x"), Err(TpmError::NotBuilt)));
        assert!(matches!(tpm.srk_name(), Err(TpmError::NotBuilt)));
        let msg = TpmError::NotBuilt.to_string();
        assert!(msg.contains("--features tpm2"), "{msg}");
    }
}

/// Tests against a real TPM: one swtpm per test, on loopback ports of its
/// own, with its own state directory, stopped by its pid.
#[cfg(all(test, feature = "tpm2"))]
mod swtpm_tests {
    use std::net::TcpListener;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    use super::*;

    use splitsign_testkit::swtpm::Swtpm;

    fn tpm_of(sw: &Swtpm) -> Tpm {
        Tpm::new(&sw.tcti())
    }

    fn secret(seed: u8) -> [u8; 32] {
        std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
    }

    #[test]
    fn unseal_sealed_to_checks_the_srk_on_the_same_connection() {
        let (a, b) = (Swtpm::start(), Swtpm::start());
        let sealed = tpm_of(&a).seal(&secret(4)).unwrap();
        let back = tpm_of(&a)
            .unseal_sealed_to(&sealed.blob, &sealed.srk_name)
            .unwrap();
        assert_eq!(*back, secret(4));
        // On another TPM: named before the load, with that TPM's SRK Name.
        match tpm_of(&b).unseal_sealed_to(&sealed.blob, &sealed.srk_name) {
            Err(TpmError::SealedElsewhere { here }) => {
                assert_eq!(here, tpm_of(&b).srk_name().unwrap());
            }
            other => panic!("{:?}", other.map(|_| "unsealed")),
        }
    }

    #[test]
    fn seal_unseal_round_trip() {
        let sw = Swtpm::start();
        let tpm = tpm_of(&sw);
        let s = secret(1);
        let sealed = tpm.seal(&s).unwrap();
        assert_eq!(sealed.srk_name.len(), 34, "nameAlg SHA-256 + digest");
        assert_eq!(&sealed.srk_name[..2], &[0x00, 0x0b]);
        assert_eq!(*tpm.unseal(&sealed.blob).unwrap(), s);
        // Again (every object was flushed: the simulator has 3 slots).
        for _ in 0..5 {
            assert_eq!(*tpm.unseal(&sealed.blob).unwrap(), s);
        }
        // Two seals of one secret are two blobs; both unseal.
        let again = tpm.seal(&s).unwrap();
        assert_ne!(again.blob, sealed.blob);
        assert_eq!(again.srk_name, sealed.srk_name);
        assert_eq!(*tpm.unseal(&again.blob).unwrap(), s);
        // The blob does not hold the secret in clear.
        assert!(!sealed.blob.windows(32).any(|w| w == s));
    }

    #[test]
    fn srk_name_stable_on_one_tpm_differs_between_two() {
        let (a, b) = (Swtpm::start(), Swtpm::start());
        let n1 = tpm_of(&a).srk_name().unwrap();
        let n2 = tpm_of(&a).srk_name().unwrap();
        assert_eq!(n1, n2);
        assert_eq!(tpm_of(&a).seal(&secret(2)).unwrap().srk_name, n1);
        let m = tpm_of(&b).srk_name().unwrap();
        assert_ne!(n1, m);
    }

    #[test]
    fn blob_from_another_tpm_is_named() {
        let (a, b) = (Swtpm::start(), Swtpm::start());
        let sealed = tpm_of(&a).seal(&secret(3)).unwrap();
        let err = tpm_of(&b).unseal(&sealed.blob).unwrap_err();
        println!("another TPM: {err}");
        assert!(matches!(err, TpmError::NotSealedHere { .. }), "{err:?}");
        assert!(err.to_string().contains("sealed to another TPM"), "{err}");
        // Still fine on its own TPM.
        assert_eq!(*tpm_of(&a).unseal(&sealed.blob).unwrap(), secret(3));
    }

    #[test]
    fn every_flipped_byte_is_refused_without_panic() {
        let sw = Swtpm::start();
        let tpm = tpm_of(&sw);
        let sealed = tpm.seal(&secret(4)).unwrap();
        let mut shown = std::collections::BTreeSet::new();
        for i in 0..sealed.blob.len() {
            for bit in [0x01u8, 0x80] {
                let mut blob = sealed.blob.clone();
                blob[i] ^= bit;
                let err = tpm
                    .unseal(&blob)
                    .expect_err(&format!("byte {i} ^ {bit:#x} unsealed"));
                assert!(
                    matches!(err, TpmError::Malformed(_) | TpmError::NotSealedHere { .. }),
                    "byte {i} ^ {bit:#x}: {err:?}"
                );
                let kind = match &err {
                    TpmError::Malformed(_) => "malformed",
                    _ => "refused",
                };
                if shown.insert((kind, i < 7 + 2)) {
                    println!("flipped byte {i}: {err}");
                }
            }
        }
        // The TPM holds nothing left over.
        assert_eq!(*tpm.unseal(&sealed.blob).unwrap(), secret(4));
    }

    #[test]
    fn random_and_truncated_blobs_never_panic() {
        let sw = Swtpm::start();
        let tpm = tpm_of(&sw);
        let sealed = tpm.seal(&secret(5)).unwrap();
        for n in 0..sealed.blob.len() {
            assert!(tpm.unseal(&sealed.blob[..n]).is_err(), "truncated to {n}");
        }
        // xorshift: random bytes, with and without a valid header and lengths.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            let len = (next() % 300) as usize;
            let mut blob: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 3 != 0 && blob.len() > 9 {
                blob[..5].copy_from_slice(MAGIC);
            }
            if round % 3 == 2 {
                // Keep the real public part, random private part.
                let pub_end = 7 + usize::from(u16::from_be_bytes([sealed.blob[5], sealed.blob[6]]));
                let mut b = sealed.blob[..pub_end].to_vec();
                let priv_len = (next() % 200) as u16;
                b.extend_from_slice(&priv_len.to_be_bytes());
                b.extend((0..priv_len).map(|_| next() as u8));
                blob = b;
            }
            assert!(tpm.unseal(&blob).is_err(), "round {round} unsealed");
        }
        assert_eq!(*tpm.unseal(&sealed.blob).unwrap(), secret(5));
    }

    #[test]
    fn unreachable_tpm_is_named() {
        // A port nobody listens on.
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let tpm = Tpm::new(&format!("swtpm:host=127.0.0.1,port={port}"));
        for err in [tpm.srk_name().unwrap_err(), tpm.seal(&[0; 32]).unwrap_err()] {
            println!("nobody listening: {err}");
            assert!(matches!(err, TpmError::Unreachable { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("port={port}")), "{msg}");
            assert!(msg.contains("refused"), "{msg}");
        }
        // A blob is parsed before the TPM is opened: a malformed one is
        // named as such even with no TPM.
        assert!(matches!(tpm.unseal(b"junk"), Err(TpmError::Malformed(_))));
        // No such device.
        let err = Tpm::new("device:/nonexistent/tpmrm0")
            .srk_name()
            .unwrap_err();
        println!("no device: {err}");
        assert!(matches!(err, TpmError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains("No such file"), "{err}");
        // Not a TCTI.
        let err = Tpm::new("nonsense").srk_name().unwrap_err();
        println!("bad tcti: {err}");
        assert!(matches!(err, TpmError::BadTcti { .. }), "{err:?}");
    }

    #[test]
    fn unopenable_device_names_group_tss() {
        // A device node this user may not open (as root the mode is
        // bypassed, and the TSS's own failure is named instead).
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("tpmrm0");
        std::fs::write(&dev, b"").unwrap();
        std::fs::set_permissions(&dev, std::os::unix::fs::PermissionsExt::from_mode(0o000))
            .unwrap();
        let err = Tpm::new(&format!("device:{}", dev.display()))
            .srk_name()
            .unwrap_err();
        println!("unopenable device: {err}");
        assert!(matches!(err, TpmError::Unreachable { .. }), "{err:?}");
        if !rustix::process::geteuid().is_root() {
            let msg = err.to_string();
            assert!(msg.contains("Permission denied"), "{msg}");
            assert!(msg.contains("group tss"), "{msg}");
        }
    }

    /// The SRK is the standard one: tpm2-tools' TCG SRK (ECC P-256 with
    /// the provisioning-guidance attributes and 32-byte zero x and y) has
    /// the same Name. Skipped where tpm2-tools is not installed.
    #[test]
    fn srk_is_the_one_tpm2_tools_makes() {
        use std::io::Write;
        if Command::new("tpm2_createprimary")
            .arg("-v")
            .output()
            .is_err()
        {
            println!("tpm2-tools not installed: skipped");
            return;
        }
        let sw = Swtpm::start();
        let ours = tpm_of(&sw).srk_name().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("tpm2_createprimary")
            .env("TPM2TOOLS_TCTI", sw.tcti())
            .args([
                "-C",
                "o",
                "-g",
                "sha256",
                "-G",
                "ecc256:null:aes128cfb",
                "-a",
            ])
            .arg("restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda")
            .args(["-u", "-", "-c"])
            .arg(dir.path().join("srk.ctx"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&[0u8; 64]).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let out = Command::new("tpm2_readpublic")
            .env("TPM2TOOLS_TCTI", sw.tcti())
            .arg("-c")
            .arg(dir.path().join("srk.ctx"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let out = String::from_utf8(out.stdout).unwrap();
        let name = out
            .lines()
            .find_map(|l| l.strip_prefix("name: "))
            .unwrap_or_else(|| panic!("no name in {out}"));
        assert_eq!(name.trim(), hex(&ours), "{out}");
        println!("SRK name {name} (tpm2_createprimary agrees)");
    }

    #[test]
    fn measure_seal_and_unseal() {
        let sw = Swtpm::start();
        let tpm = tpm_of(&sw);
        let s = secret(6);
        let mut blob = Vec::new();
        for run in 0..5 {
            let t = Instant::now();
            let sealed = tpm.seal(&s).unwrap();
            let seal = t.elapsed();
            let t = Instant::now();
            let back = tpm.unseal(&sealed.blob).unwrap();
            let unseal = t.elapsed();
            assert_eq!(*back, s);
            println!(
                "run {run}: seal {seal:?}, unseal {unseal:?}, blob {} bytes",
                sealed.blob.len()
            );
            blob = sealed.blob;
        }
        let t = Instant::now();
        tpm.srk_name().unwrap();
        println!("srk_name {:?}; blob {} bytes", t.elapsed(), blob.len());
    }
}
