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
        check_name(c)?;
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

fn check_name(c: &str) -> Result<()> {
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
    Ok(())
}

/// Issues certificates for more clients from the CA `pki init` wrote into `dir` (ca.pem and
/// ca.key): NAME.pem and NAME.key each. An existing NAME.pem is not overwritten.
pub fn add_clients(dir: &Path, clients: &[String]) -> Result<Written> {
    if clients.is_empty() {
        bail!("name at least one client with --client NAME");
    }
    for c in clients {
        check_name(c)?;
        if dir.join(format!("{c}.pem")).exists() {
            bail!(
                "{} already exists: client {c:?} has a certificate (remove it first to issue a new one)",
                dir.join(format!("{c}.pem")).display()
            );
        }
    }
    let read = |f: &str| {
        let p = dir.join(f);
        fs::read(&p).with_context(|| {
            format!(
                "reading {} (the CA that `dots-agent pki init --dir {}` wrote)",
                p.display(),
                dir.display()
            )
        })
    };
    let cert = X509::from_pem(&read("ca.pem")?).map_err(|_| {
        anyhow::anyhow!("{} is not a PEM certificate", dir.join("ca.pem").display())
    })?;
    let key = PKey::private_key_from_pem(&read("ca.key")?).map_err(|_| {
        anyhow::anyhow!(
            "{} is not an unencrypted PEM private key",
            dir.join("ca.key").display()
        )
    })?;
    if !cert.public_key()?.public_eq(&key) {
        bail!("ca.key in {} does not belong to ca.pem", dir.display());
    }
    let ca = Ca { cert, key };
    let mut files = Vec::new();
    for c in clients {
        let (cert, key) = issue(&ca, c, Role::Client)?;
        for (file, data, private) in [
            (format!("{c}.pem"), cert.to_pem()?, false),
            (format!("{c}.key"), key.private_key_to_pem_pkcs8()?, true),
        ] {
            let p = dir.join(file);
            write(&p, &data, private)?;
            files.push(p);
        }
    }
    Ok(Written { files })
}

/// Checks the server's CA file, certificate (chain) and key as a start would use them, and
/// says what to fix in words (not OpenSSL's): files readable, PEM of the right kind, the key
/// unencrypted and belonging to the certificate, the certificates within their validity.
/// Returns notes worth a warning (e.g. a certificate that expires within 30 days).
pub fn check_credentials(ca: &Path, cert: &Path, key: &Path) -> Result<Vec<String>> {
    let read = |what: &str, p: &Path| {
        fs::read(p).with_context(|| format!("[tls] {what}: cannot read {}", p.display()))
    };
    let cas = X509::stack_from_pem(&read("ca", ca)?)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "[tls] ca: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ca.display()
            )
        })?;
    let chain = X509::stack_from_pem(&read("cert", cert)?)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "[tls] cert: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                cert.display()
            )
        })?;
    let pkey = PKey::private_key_from_pem(&read("key", key)?).map_err(|_| {
        anyhow::anyhow!(
            "[tls] key: {} is not an unencrypted PEM private key (the server cannot ask for a passphrase)",
            key.display()
        )
    })?;
    if !chain[0].public_key()?.public_eq(&pkey) {
        bail!(
            "[tls] key {} does not belong to the certificate {} (their public keys differ): \
             give the key that was made with that certificate",
            key.display(),
            cert.display()
        );
    }
    let now = Asn1Time::days_from_now(0)?;
    let soon = Asn1Time::days_from_now(30)?;
    let mut notes = Vec::new();
    let named = [("ca", ca, &cas[..]), ("cert", cert, &chain[..])];
    for (what, path, certs) in named {
        for c in certs {
            let subject = common_name(c).unwrap_or_else(|| "(no CN)".into());
            if c.not_after() < now {
                bail!(
                    "[tls] {what}: certificate {subject:?} in {} expired on {}: issue a new one",
                    path.display(),
                    c.not_after()
                );
            }
            if c.not_before() > now {
                bail!(
                    "[tls] {what}: certificate {subject:?} in {} is not valid before {} (is the clock right?)",
                    path.display(),
                    c.not_before()
                );
            }
            if c.not_after() < soon {
                notes.push(format!(
                    "[tls] {what}: certificate {subject:?} in {} expires on {}",
                    path.display(),
                    c.not_after()
                ));
            }
        }
    }
    Ok(notes)
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
    fn add_client_issues_from_the_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "dots.example", &[], &["client-a".into()]).unwrap();
        let w = add_clients(dir.path(), &["client-b".into()]).unwrap();
        assert_eq!(w.files.len(), 2);
        let ca = X509::from_pem(&fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();
        let b = X509::from_pem(&fs::read(dir.path().join("client-b.pem")).unwrap()).unwrap();
        assert!(verifies(&ca, &b));
        assert_eq!(common_name(&b).as_deref(), Some("client-b"));
        let again = add_clients(dir.path(), &["client-b".into()]).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
        let none = add_clients(&dir.path().join("nope"), &["c".into()]).unwrap_err();
        assert!(format!("{none:#}").contains("reading"), "{none:#}");
    }

    #[test]
    fn credentials_are_checked_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        init(d, "dots.example", &[], &["client-a".into()]).unwrap();
        let check = |ca: &str, cert: &str, key: &str| {
            check_credentials(&d.join(ca), &d.join(cert), &d.join(key))
                .map_err(|e| format!("{e:#}"))
        };
        assert_eq!(check("ca.pem", "server.pem", "server.key"), Ok(vec![]));
        let e = check("ca.pem", "server.pem", "client-a.key").unwrap_err();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        let e = check("ca.pem", "server.key", "server.key").unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = check("ca.pem", "server.pem", "server.pem").unwrap_err();
        assert!(e.contains("not an unencrypted PEM private key"), "{e}");
        let e = check("ca.pem", "server.pem", "missing.key").unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        // An expired certificate (valid from 10 days ago to 1 day ago).
        let ca = new_ca("old CA").unwrap();
        let (cert, key) = issue(&ca, "old", Role::Client).unwrap();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(cert.subject_name()).unwrap();
        b.set_issuer_name(ca.cert.subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(1_000_000_000).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(1_000_086_400).unwrap())
            .unwrap();
        b.sign(&ca.key, MessageDigest::sha256()).unwrap();
        fs::write(d.join("old.pem"), b.build().to_pem().unwrap()).unwrap();
        fs::write(d.join("old.key"), key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let e = check("ca.pem", "old.pem", "old.key").unwrap_err();
        assert!(e.contains("expired on"), "{e}");
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
