/**
 * TLS material from PEM files: a CA, a certificate and its key, read and checked once
 * (the key matches the certificate, the certificate chains to the CA, neither expired),
 * so a wrong file fails at start with a message naming it instead of at the first
 * handshake. Also the peer-name rule of `--tls-allowed-names` (TiCDC's `cert-allowed-cn`):
 * a peer's names are its subject CN and its DNS subject alternative names.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { PeerCertificate } from 'node:tls';

/** Where the PEM files are. */
export interface TlsFiles {
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
}

/** The PEM bytes, checked. */
export interface TlsMaterial {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  /** The names of `cert` (CN and DNS SANs). */
  readonly names: readonly string[];
}

/** A TLS file that cannot be used; names the option and the file. */
export class TlsFileError extends Error {
  override readonly name = 'TlsFileError';
  readonly retryable = false;
}

function readPem(what: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new TlsFileError(`${what} ${path} cannot be read: ${(error as Error).message}`);
  }
}

function parseCertificate(what: string, path: string, pem: Buffer): X509Certificate {
  try {
    return new X509Certificate(pem);
  } catch (error) {
    throw new TlsFileError(`${what} ${path} is not a PEM certificate: ${(error as Error).message}`);
  }
}

/**
 * Reads and checks a CA file alone (a client that verifies a server but shows no
 * certificate of its own).
 */
export function readCaFile(what: string, path: string, now = new Date()): Buffer {
  const pem = readPem(what, path);
  const ca = parseCertificate(what, path, pem);
  checkValidity(what, path, ca, now);
  return pem;
}

/** Reads `files` and checks that they fit together; `what` prefixes the option names (`--tls`, `--etcd`). */
export function readTlsMaterial(what: string, files: TlsFiles, now = new Date()): TlsMaterial {
  const caPem = readCaFile(`${what}-ca`, files.caFile, now);
  const certPem = readPem(`${what}-cert`, files.certFile);
  const keyPem = readPem(`${what}-key`, files.keyFile);
  const ca = new X509Certificate(caPem);
  const cert = parseCertificate(`${what}-cert`, files.certFile, certPem);
  checkValidity(`${what}-cert`, files.certFile, cert, now);
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (error) {
    throw new TlsFileError(`${what}-key ${files.keyFile} is not a PEM private key: ${(error as Error).message}`);
  }
  if (!cert.checkPrivateKey(key)) throw new TlsFileError(`${what}-key ${files.keyFile} is not the key of ${what}-cert ${files.certFile}`);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) {
    throw new TlsFileError(`${what}-cert ${files.certFile} is not signed by ${what}-ca ${files.caFile}`);
  }
  return { ca: caPem, cert: certPem, key: keyPem, names: certificateNames(cert) };
}

function checkValidity(what: string, path: string, cert: X509Certificate, now: Date): void {
  if (new Date(cert.validTo) < now) throw new TlsFileError(`${what} ${path} expired on ${cert.validTo}`);
  if (new Date(cert.validFrom) > now) throw new TlsFileError(`${what} ${path} is not valid before ${cert.validFrom}`);
}

/** The names a certificate is known by: its subject CN and its DNS subject alternative names. */
export function certificateNames(cert: X509Certificate | PeerCertificate): string[] {
  const names: string[] = [];
  const subject = cert instanceof X509Certificate ? cert.subject : undefined;
  const cn = subject === undefined ? (cert as PeerCertificate).subject?.CN : /(?:^|\n)CN=([^\n]*)/.exec(subject)?.[1];
  if (typeof cn === 'string' && cn !== '') names.push(cn);
  const sans = cert instanceof X509Certificate ? cert.subjectAltName : (cert as PeerCertificate).subjectaltname;
  for (const entry of (sans ?? '').split(/,\s*/)) {
    if (entry.startsWith('DNS:')) {
      const name = entry.slice(4);
      if (!names.includes(name)) names.push(name);
    }
  }
  return names;
}

/**
 * True when a peer with `names` may talk to us: any name in `allowed`, or any name at all
 * when no list is set (the CA alone decides then).
 */
export function peerNameAllowed(names: readonly string[], allowed: ReadonlySet<string> | undefined): boolean {
  if (allowed === undefined) return true;
  return names.some((name) => allowed.has(name));
}

/** Parses a comma-separated name list (`--tls-allowed-names`); throws on an empty or odd name. */
export function parseNameList(option: string, raw: string): ReadonlySet<string> {
  const names = raw.split(',').map((n) => n.trim()).filter((n) => n !== '');
  if (names.length === 0) throw new TlsFileError(`${option} must list at least one name`);
  for (const name of names) {
    if (!/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,252}$/.test(name)) throw new TlsFileError(`${option}: ${JSON.stringify(name.slice(0, 80))} is not a certificate name`);
  }
  return new Set(names);
}
