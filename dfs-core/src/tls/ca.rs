//! The cluster's certificate authority: `dfs ca init DIR` makes it, `dfs ca
//! issue` signs one certificate per process (or per role on a host) with
//! its identity. The CA key signs nothing else and should stay on the
//! operator's machine; hosts get `ca.crt` and their own pair.
//!
//! Files: `DIR/ca.crt`, `DIR/ca.key`; an issued pair is `OUT/STEM.crt` and
//! `OUT/STEM.key` (STEM defaults to the role, which is what each program
//! looks for in its TLS directory), with `ca.crt` copied beside them.
//! Keys are written mode 0600. `dfs ca revoke CERT` adds a certificate to
//! `DIR/revoked` (serial, name, time: the record) and signs
//! `DIR/crl.pem` anew from it, for the hosts' TLS directories.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};

use rustls::pki_types::pem::PemObject;

use super::identity::Identity;
use super::{TlsError, CA_CERT, CA_KEY, CRL_FILE};

/// The CA's record of what it revoked, one `SERIAL-HEX NAME UNIX-SECONDS`
/// line each: the source `crl.pem` is signed from.
const REVOKED_FILE: &str = "revoked";

/// How long a cluster CA is valid.
const CA_DAYS: i64 = 10 * 365;
/// How long an issued certificate is valid (rotate before: `dfs ca issue`
/// again and restart the process).
pub const LEAF_DAYS: i64 = 825;

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Issue(format!("{what}: {e}"))
}

/// Creates a new CA in `dir` (made if missing). Refuses to replace one.
pub fn init(dir: &Path) -> Result<PathBuf, TlsError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    if cert_path.exists() || key_path.exists() {
        return Err(TlsError::Issue(format!(
            "{} already holds a CA; remove it first to make a new one (every certificate it issued stops working)",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))?;
    let key = KeyPair::generate().map_err(rcgen_err("cannot make a key"))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "dfs cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CA_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_err("cannot sign the CA"))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, cert.pem().as_bytes())?;
    Ok(cert_path)
}

/// Signs a certificate for `identity` with the CA in `ca_dir`, writing
/// `out/STEM.crt` and `out/STEM.key` (and `out/ca.crt` when missing).
/// With `reuse_key`, the certificate is for that existing key (a renewal
/// that keeps a chunk server's registration); otherwise a new key is made.
/// Returns the two paths.
pub fn issue(
    ca_dir: &Path,
    identity: &Identity,
    out: &Path,
    stem: &str,
    extra_names: &[String],
    reuse_key: Option<&Path>,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let (ca_pem, ca, ca_key) = load_ca(ca_dir)?;

    let key = match reuse_key {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|e| TlsError::io(path, e))?;
            KeyPair::from_pem(&pem).map_err(rcgen_err("not a usable private key"))?
        }
        None => KeyPair::generate().map_err(rcgen_err("cannot make a key"))?,
    };
    let mut params = CertificateParams::default();
    // A serial of its own (rcgen's default derives it from the key, and a
    // renewal for the same key would share it, and its revocation).
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| TlsError::Issue("no randomness for a serial number".into()))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{} {}", identity.role, identity.name),
    );
    let mut names = vec![
        SanType::DnsName(
            identity
                .role
                .dns_name()
                .try_into()
                .map_err(rcgen_err("bad DNS name"))?,
        ),
        SanType::URI(
            identity
                .to_uri()
                .try_into()
                .map_err(rcgen_err("bad identity URI"))?,
        ),
    ];
    for extra in extra_names {
        names.push(match extra.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                extra
                    .clone()
                    .try_into()
                    .map_err(rcgen_err("bad host name"))?,
            ),
        });
    }
    params.subject_alt_names = names;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Every process both serves and calls (a chunk server calls dfs-meta).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(LEAF_DAYS);
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .map_err(rcgen_err("cannot sign the certificate"))?;

    std::fs::create_dir_all(out).map_err(|e| TlsError::io(out, e))?;
    let cert_path = out.join(format!("{stem}.crt"));
    let key_path = out.join(format!("{stem}.key"));
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_public(&cert_path, cert.pem().as_bytes())?;
    let out_ca = out.join(CA_CERT);
    if !out_ca.exists() {
        write_public(&out_ca, ca_pem.as_bytes())?;
    }
    Ok((cert_path, key_path))
}

/// The CA in `ca_dir`: its certificate's PEM, and the certificate and key
/// rcgen signs with.
fn load_ca(ca_dir: &Path) -> Result<(String, rcgen::Certificate, KeyPair), TlsError> {
    let ca_cert_path = ca_dir.join(CA_CERT);
    let ca_key_path = ca_dir.join(CA_KEY);
    let ca_pem =
        std::fs::read_to_string(&ca_cert_path).map_err(|e| TlsError::io(&ca_cert_path, e))?;
    let ca_key_pem =
        std::fs::read_to_string(&ca_key_path).map_err(|e| TlsError::io(&ca_key_path, e))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(rcgen_err("bad CA key"))?;
    // rcgen signs with a CA it holds as params: rebuilt from the CA's
    // certificate, it has the same subject and key, which is all a
    // signature names.
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)
        .map_err(rcgen_err("bad CA certificate"))?
        .self_signed(&ca_key)
        .map_err(rcgen_err("cannot load the CA"))?;
    Ok((ca_pem, ca, ca_key))
}

/// Revokes the certificate in `cert` (a PEM file the CA in `ca_dir`
/// issued): records it in `ca_dir/revoked` and signs `ca_dir/crl.pem`
/// listing every certificate revoked so far. Returns the CRL's path and
/// the holder's identity. Revoking one twice lists it once.
pub fn revoke(ca_dir: &Path, cert: &Path) -> Result<(PathBuf, Identity), TlsError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (ca_pem, ca, ca_key) = load_ca(ca_dir)?;
    let bad = |reason: String| TlsError::BadFile {
        path: cert.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(cert).map_err(|e| TlsError::io(cert, e))?;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| bad("no certificate in the file".into()))?
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    let identity = Identity::from_certificate(&der).map_err(|e| bad(e.to_string()))?;
    let (_, parsed) = X509Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
    let ca_der = rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| TlsError::Issue("the CA certificate is unreadable".into()))?;
    let (_, ca_parsed) =
        X509Certificate::from_der(&ca_der).map_err(|e| TlsError::Issue(e.to_string()))?;
    if parsed.issuer() != ca_parsed.subject()
        || parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .is_err()
    {
        return Err(bad(format!(
            "was not issued by the CA in {}",
            ca_dir.display()
        )));
    }
    let serial = hex::encode(parsed.raw_serial());

    let record_path = ca_dir.join(REVOKED_FILE);
    let mut record = match std::fs::read_to_string(&record_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(TlsError::io(&record_path, e)),
    };
    let now = time::OffsetDateTime::now_utc();
    if !record
        .lines()
        .any(|l| l.split(' ').next() == Some(serial.as_str()))
    {
        record.push_str(&format!(
            "{serial} {} {}\n",
            identity.to_uri(),
            now.unix_timestamp()
        ));
    }
    let mut revoked = Vec::new();
    for line in record.lines() {
        let mut fields = line.split(' ');
        let (Some(hex_serial), Some(_), Some(when)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(TlsError::BadFile {
                path: record_path.clone(),
                reason: format!("bad line `{line}`"),
            });
        };
        let bytes = hex::decode(hex_serial).map_err(|e| TlsError::BadFile {
            path: record_path.clone(),
            reason: format!("bad serial `{hex_serial}`: {e}"),
        })?;
        let when = when
            .parse::<i64>()
            .ok()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
            .unwrap_or(now);
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time: when,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let crl = CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        // rustls does not hold dfs to it (it does not enforce a CRL's
        // expiry unless asked): a list stays good until replaced.
        next_update: now + time::Duration::days(CA_DAYS),
        crl_number: SerialNumber::from(revoked.len() as u64),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca, &ca_key)
    .map_err(rcgen_err("cannot sign the revocation list"))?;
    let crl_pem = crl
        .pem()
        .map_err(rcgen_err("cannot encode the revocation list"))?;
    write_public(&record_path, record.as_bytes())?;
    let crl_path = ca_dir.join(CRL_FILE);
    write_public(&crl_path, crl_pem.as_bytes())?;
    Ok((crl_path, identity))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| TlsError::io(path, e))?;
    f.write_all(bytes).map_err(|e| TlsError::io(path, e))
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    std::fs::write(path, bytes).map_err(|e| TlsError::io(path, e))
}
