/**
 * Throwaway certificates for the TLS tests, made with the openssl CLI: an EC P-256 CA
 * and leaf certificates it signs, each for localhost and 127.0.0.1, usable by servers
 * and clients alike. (To be replaced by `spanfeed certs create`.)
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ensureApt = fileURLToPath(new URL('../../scripts/ensure-apt.sh', import.meta.url));

/** Where {@link makeTestCerts} put the PEM files. */
export interface TestCerts {
  readonly ca: string;
  readonly caKey: string;
  readonly certs: Readonly<Record<string, { readonly cert: string; readonly key: string }>>;
}

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Installs openssl when missing (as root), or throws with what to install. */
export function ensureOpenssl(): void {
  execFileSync('bash', [ensureApt, 'openssl', 'command -v openssl', 'openssl'], { stdio: 'inherit' });
}

/** Makes a CA and one leaf certificate per name (CN = the name) in `dir`. */
export function makeTestCerts(dir: string, names: readonly string[]): TestCerts {
  ensureOpenssl();
  const ca = join(dir, 'ca.pem');
  const caKey = join(dir, 'ca-key.pem');
  openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', caKey);
  openssl('req', '-x509', '-new', '-key', caKey, '-sha256', '-days', '2', '-subj', '/CN=spanfeed test CA', '-out', ca);
  const extFile = join(dir, 'leaf.ext');
  writeFileSync(extFile, 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n');
  const certs: Record<string, { cert: string; key: string }> = {};
  for (const name of names) {
    const key = join(dir, `${name}-key.pem`);
    const csr = join(dir, `${name}.csr`);
    const cert = join(dir, `${name}.pem`);
    // PKCS#8 keys: what etcd and Node both read.
    openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key);
    openssl('req', '-new', '-key', key, '-subj', `/CN=${name}`, '-out', csr);
    openssl('x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-days', '2', '-sha256', '-extfile', extFile, '-out', cert);
    certs[name] = { cert, key };
  }
  return { ca, caKey, certs };
}
