/**
 * Certificates for the TLS tests, made by the product's own `spanfeed certs create` (the
 * openssl CLI underneath; installed first when missing, as root): a CA and one
 * certificate per name, each also for localhost and 127.0.0.1, usable by servers and
 * clients alike.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ensureApt = fileURLToPath(new URL('../../scripts/ensure-apt.sh', import.meta.url));
const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));

/** Where {@link makeTestCerts} put the PEM files. */
export interface TestCerts {
  readonly dir: string;
  readonly ca: string;
  readonly caKey: string;
  readonly certs: Readonly<Record<string, { readonly cert: string; readonly key: string }>>;
}

/** Installs openssl when missing (as root), or throws with what to install. */
export function ensureOpenssl(): void {
  execFileSync('bash', [ensureApt, 'openssl', 'command -v openssl', 'openssl'], { stdio: 'inherit' });
}

/** Makes a CA and one certificate per name (CN = the name) in `dir` with `spanfeed certs create`. */
export function makeTestCerts(dir: string, names: readonly string[]): TestCerts {
  ensureOpenssl();
  // The command wants at least one name; a CA alone gets one nobody uses.
  const asked = names.length === 0 ? ['unused'] : names;
  const run = spawnSync(process.execPath, [bin, 'certs', 'create', '--dir', dir, '--names', asked.join(',')], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`spanfeed certs create failed (${run.status}): ${run.stderr}`);
  const certs: Record<string, { cert: string; key: string }> = {};
  for (const name of names) certs[name] = { cert: join(dir, `${name}.pem`), key: join(dir, `${name}-key.pem`) };
  return { dir, ca: join(dir, 'ca.pem'), caKey: join(dir, 'ca-key.pem'), certs };
}
