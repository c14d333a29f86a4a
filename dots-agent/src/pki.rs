//! A small PKI for labs (`dots-agent pki init`): a CA, a server certificate and client
//! certificates, PEM files, with openssl. DOTS uses mutual X.509 authentication: the server
//! knows a client by the subject CN of its certificate, and derives the client's cuid from
//! the certificate's public key (RFC 9132 §4.4.1.1).

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use openssl::asn1::Asn1Time;
use openssl::base64;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509NameBuilder, X509};

/// Validity of lab certificates.
const DAYS: u32 = 825;

fn key() -> Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn serial() -> Result<openssl::asn1::Asn1Integer> {
    let mut bn = BigNum::new()?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)?;
    Ok(bn.to_asn1_integer()?)
}

fn name(cn: &str) -> Result<openssl::x509::X509Name> {
    let mut b = X509NameBuilder::new()?;
    b.append_entry_by_nid(Nid::ORGANIZATIONNAME, "dots-agent lab")?;
    b.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    Ok(b.build())
}

/// A CA certificate and its key.
pub struct Ca {
    pub cert: X509,
    pub key: PKey<Private>,
}

pub fn new_ca(cn: &str) -> Result<Ca> {
    let key = key()?;
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    let n = name(cn)?;
    b.set_subject_name(&n)?;
    b.set_issuer_name(&n)?;
    b.set_pubkey(&key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(DAYS)?)?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok(Ca {
        cert: b.build(),
        key,
    })
}

pub enum Role<'a> {
    /// DNS names and IP addresses for subjectAltName.
    Server {
        names: &'a [String],
        ips: &'a [IpAddr],
    },
    Client,
}

/// Issues an end-entity certificate; returns it with its new key.
pub fn issue(ca: &Ca, cn: &str, role: Role<'_>) -> Result<(X509, PKey<Private>)> {
    let key = key()?;
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    let subject = name(cn)?;
    b.set_subject_name(&subject)?;
    b.set_issuer_name(ca.cert.subject_name())?;
    b.set_pubkey(&key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(DAYS)?)?;
    b.append_extension(BasicConstraints::new().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_agreement()
            .build()?,
    )?;
    match role {
        Role::Server { names, ips } => {
            b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
            let mut san = SubjectAlternativeName::new();
            for n in names {
                san.dns(n);
            }
            for ip in ips {
                san.ip(&ip.to_string());
            }
            let san = san.build(&b.x509v3_context(Some(&ca.cert), None))?;
            b.append_extension(san)?;
        }
        Role::Client => {
            b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        }
    }
    let aki = AuthorityKeyIdentifier::new()
        .keyid(false)
        .build(&b.x509v3_context(Some(&ca.cert), None))?;
    b.append_extension(aki)?;
    b.sign(&ca.key, MessageDigest::sha256())?;
    Ok((b.build(), key))
}

/// The subject common name of a certificate.
pub fn common_name(cert: &X509) -> Option<String> {
    let e = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
    std::str::from_utf8(e.data().as_slice())
        .ok()
        .map(String::from)
}

/// RFC 9132 §4.4.1.1: SHA-256 of the DER SubjectPublicKeyInfo, first 16 bytes, base64url
/// without padding (22 characters).
pub fn cuid(cert: &X509) -> Result<String> {
    let spki = cert.public_key()?.public_key_to_der()?;
    Ok(cuid_of(&spki))
}

/// The same over any identity bytes (SPKI, raw public key or PSK identity).
pub fn cuid_of(identity: &[u8]) -> String {
    let digest = openssl::sha::sha256(identity);
    let b64 = base64::encode_block(&digest[..16]);
    b64.trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn write(path: &Path, data: &[u8], private: bool) -> Result<()> {
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    if private {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

/// What `pki init` wrote.
#[derive(Debug)]
pub struct Written {
    pub files: Vec<PathBuf>,
}

/// Writes ca.pem/ca.key, server.pem/server.key and NAME.pem/NAME.key per client.
pub fn init(
    dir: &Path,
    server_name: &str,
    server_ips: &[IpAddr],
    clients: &[String],
) -> Result<Written> {
    if server_name.is_empty() {
        bail!("--server-name must not be empty");
    }
    for c in clients {
        if c.is_empty()
            || !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            bail!("client name {c:?}: use letters, digits, '-', '_' or '.' (it becomes a file name and the certificate CN)");
        }
        if c == "ca" || c == "server" {
            bail!("client name {c:?} would overwrite the {c} files; choose another");
        }
    }
    if clients.is_empty() {
        bail!("name at least one client with --client NAME");
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join("ca.key").exists() {
        bail!(
            "{} already holds a CA (ca.key); remove it or choose another --dir",
            dir.display()
        );
    }
    let ca = new_ca("dots-agent lab CA")?;
    let mut files = Vec::new();
    let mut put = |file: &str, data: Vec<u8>, private: bool| -> Result<()> {
        let p = dir.join(file);
        write(&p, &data, private)?;
        files.push(p);
        Ok(())
    };
    put("ca.pem", ca.cert.to_pem()?, false)?;
    put("ca.key", ca.key.private_key_to_pem_pkcs8()?, true)?;
    let names = vec![server_name.to_string()];
    let (cert, key) = issue(
        &ca,
        server_name,
        Role::Server {
            names: &names,
            ips: server_ips,
        },
    )?;
    put("server.pem", cert.to_pem()?, false)?;
    put("server.key", key.private_key_to_pem_pkcs8()?, true)?;
    for c in clients {
        let (cert, key) = issue(&ca, c, Role::Client)?;
        put(&format!("{c}.pem"), cert.to_pem()?, false)?;
        put(&format!("{c}.key"), key.private_key_to_pem_pkcs8()?, true)?;
    }
    Ok(Written { files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::X509StoreContext;

    fn verifies(ca: &X509, cert: &X509) -> bool {
        let mut sb = X509StoreBuilder::new().unwrap();
        sb.add_cert(ca.clone()).unwrap();
        let store = sb.build();
        let mut ctx = X509StoreContext::new().unwrap();
        ctx.init(&store, cert, &Stack::new().unwrap(), |c| c.verify_cert())
            .unwrap()
    }

    #[test]
    fn init_writes_a_verifiable_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let w = init(
            dir.path(),
            "dots.example",
            &[ip],
            &["client-a".into(), "client-b".into()],
        )
        .unwrap();
        assert_eq!(w.files.len(), 8);
        let ca = X509::from_pem(&fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
        let server = X509::from_pem(&fs::read(dir.path().join("server.pem")).unwrap()).unwrap();
        let client = X509::from_pem(&fs::read(dir.path().join("client-a.pem")).unwrap()).unwrap();
        assert!(verifies(&ca, &server) && verifies(&ca, &client));
        assert_eq!(common_name(&client).as_deref(), Some("client-a"));
        let sans: Vec<String> = server
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.dnsname().map(String::from))
            .collect();
        assert_eq!(sans, vec!["dots.example"]);
        let mode = fs::metadata(dir.path().join("client-a.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = new_ca("another CA").unwrap();
        assert!(
            !verifies(&other.cert, &client),
            "a foreign CA does not vouch for it"
        );
        // A second init into the same directory is refused rather than overwriting keys.
        assert!(init(dir.path(), "dots.example", &[], &["client-a".into()]).is_err());
        assert_eq!(cuid(&client).unwrap().len(), 22);
    }

    #[test]
    fn cuid_matches_the_reference_computation() {
        // dots-protocol.md: PSK identity "Client_identity" -> Qu61DPs0qZJ-NyTbKgP2zQ.
        assert_eq!(cuid_of(b"Client_identity"), "Qu61DPs0qZJ-NyTbKgP2zQ");
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(init(dir.path(), "s", &[], &["../evil".into()])
            .unwrap_err()
            .to_string()
            .contains("use letters"));
        assert!(init(dir.path(), "s", &[], &["ca".into()])
            .unwrap_err()
            .to_string()
            .contains("overwrite"));
        assert!(init(dir.path(), "s", &[], &[])
            .unwrap_err()
            .to_string()
            .contains("at least one client"));
    }
}
